"""miscore's version and the plugin contract's version (read by the build and by plugins)."""

__version__ = "0.1.0"
#: the plugin contract's version: a major change breaks plugins, a minor one adds to it
PLUGIN_API_VERSION = "1.0"
