# mypy: disable-error-code="empty-body"
"""The whole plugin contract: every hook a miscore plugin can implement.

Implement a hook with the ``miscore.hookimpl`` marker in a module that your distribution
declares in the ``miscore`` entry-point group. The kernel always calls hooks with keyword
arguments, so an implementation may accept only the arguments it needs::

    # my_plugin/__init__.py
    import miscore

    @miscore.hookimpl
    def miscore_register_losses():
        return [MyLoss]

``docs/plugins/hooks.md`` has a section per hook; a test keeps the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from miscore.components import (
        Architecture,
        Augmentation,
        Evaluator,
        ImageIO,
        Loss,
        Metric,
        Subfunction,
    )
    from miscore.config import Config
    from miscore.registry import Registry
    from miscore.volume import Volume

hookspec = pluggy.HookspecMarker("miscore")
#: The marker plugin authors put on their hook implementations (``miscore.hookimpl``).
hookimpl = pluggy.HookimplMarker("miscore")


# --- registration: each returns a list of component classes -----------------------------


@hookspec
def miscore_register_io() -> list[type[ImageIO]]:
    """Register readers/writers of image formats.

    Called once when the registry is first built (at start-up of the CLI or of the API's
    first lookup). Return a list of ``ImageIO`` subclasses.

    Example::

        @miscore.hookimpl
        def miscore_register_io():
            return [NrrdIO]
    """


@hookspec
def miscore_register_subfunctions() -> list[type[Subfunction]]:
    """Register preprocessing subfunctions (``Subfunction`` subclasses).

    Called once when the registry is built. A subfunction's ``name`` is what configs put in
    their ``preprocessing`` list.

    Example::

        @miscore.hookimpl
        def miscore_register_subfunctions():
            return [Clip, ZScore]
    """


@hookspec
def miscore_register_augmentations() -> list[type[Augmentation]]:
    """Register training-time augmentations (``Augmentation`` subclasses).

    Called once when the registry is built. Each augmentation takes its randomness from the
    generator it is given, never from global state.

    Example::

        @miscore.hookimpl
        def miscore_register_augmentations():
            return [RandomFlip]
    """


@hookspec
def miscore_register_architectures() -> list[type[Architecture]]:
    """Register network architectures (``Architecture`` subclasses that build Keras models).

    Called once when the registry is built. Import Keras inside ``build``, not at module
    level, so that the CLI starts without loading TensorFlow.

    Example::

        @miscore.hookimpl
        def miscore_register_architectures():
            return [UNet3D]
    """


@hookspec
def miscore_register_losses() -> list[type[Loss]]:
    """Register training losses (``Loss`` subclasses whose ``build`` returns a Keras loss).

    Called once when the registry is built.

    Example::

        @miscore.hookimpl
        def miscore_register_losses():
            return [TverskyLoss]
    """


@hookspec
def miscore_register_metrics() -> list[type[Metric]]:
    """Register evaluation metrics (``Metric`` subclasses computed per case and class).

    Called once when the registry is built.

    Example::

        @miscore.hookimpl
        def miscore_register_metrics():
            return [Dice, Hausdorff95]
    """


@hookspec
def miscore_register_evaluators() -> list[type[Evaluator]]:
    """Register validation schemes (``Evaluator`` subclasses that split case ids into folds).

    Called once when the registry is built.

    Example::

        @miscore.hookimpl
        def miscore_register_evaluators():
            return [KFold]
    """


@hookspec
def miscore_register_commands(app: typer.Typer) -> None:
    """Add subcommands to the ``miscore`` command line.

    Called once when the CLI starts, before arguments are parsed. Keep imports inside the
    command functions so that ``miscore --help`` stays fast.

    Args:
        app: the root ``typer.Typer`` application.

    Example::

        @miscore.hookimpl
        def miscore_register_commands(app):
            @app.command()
            def hello(name: str) -> None:
                print(f"hello {name}")
    """


# --- lifecycle: observe the pipeline ------------------------------------------------------


@hookspec
def miscore_configure(config: Config, registry: Registry) -> None:
    """Called after a configuration is loaded and its components validated.

    Use it to check settings your plugin depends on; raise ``miscore.ConfigError`` to refuse.

    Args:
        config: the validated configuration.
        registry: the component registry the pipeline uses.

    Example::

        @miscore.hookimpl
        def miscore_configure(config):
            if config.training.batch_size > 64:
                raise miscore.ConfigError("training.batch_size: my plugin handles 64 at most")
    """


@hookspec
def miscore_epoch_end(epoch: int, logs: dict[str, float], model_dir: Path | None) -> None:
    """Called after each training epoch, with the metrics Keras logged for it.

    Args:
        epoch: the epoch number, starting at 1.
        logs: metric name -> value (``loss``, ``val_loss``, ...).
        model_dir: the folder the model is being saved to, if any.

    Example::

        @miscore.hookimpl
        def miscore_epoch_end(epoch, logs):
            tracker.log(step=epoch, **logs)
    """


@hookspec
def miscore_prediction_written(case_id: str, path: Path, prediction: Volume) -> None:
    """Called after a prediction has been written (renamed into its final place).

    Args:
        case_id: the case the prediction belongs to.
        path: the file or folder written.
        prediction: the label Volume on the input's grid.

    Example::

        @miscore.hookimpl
        def miscore_prediction_written(case_id, path):
            upload(path)
    """


REGISTRATION_HOOKS: dict[str, str] = {
    "io": "miscore_register_io",
    "subfunction": "miscore_register_subfunctions",
    "augmentation": "miscore_register_augmentations",
    "architecture": "miscore_register_architectures",
    "loss": "miscore_register_losses",
    "metric": "miscore_register_metrics",
    "evaluator": "miscore_register_evaluators",
}
