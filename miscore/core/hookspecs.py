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
from typing import TYPE_CHECKING, Any

import pluggy

from miscore.core.components import REGISTRATION_HOOKS

if TYPE_CHECKING:
    import typer

    from miscore.core.components import (
        Architecture,
        Augmentation,
        Callback,
        DatasetLayout,
        Evaluator,
        ImageIO,
        Loss,
        LRSchedule,
        Metric,
        Postprocessor,
        Sampler,
        Subfunction,
    )
    from miscore.core.config import Config
    from miscore.core.registry import ModelEntry, Registry
    from miscore.core.volume import Volume

hookspec = pluggy.HookspecMarker("miscore")
#: The marker plugin authors put on their hook implementations (``miscore.hookimpl``).
hookimpl = pluggy.HookimplMarker("miscore")


# --- registration: each returns a list of component classes -----------------------------


@hookspec
def miscore_register_io() -> list[type[ImageIO]]:
    """Register readers/writers of image formats.

    Called when the registry is built: on the first lookup after a plugin is registered or
    unregistered (so once in a CLI run). Return a list of ``ImageIO`` subclasses.

    Example::

        @miscore.hookimpl
        def miscore_register_io():
            return [NrrdIO]
    """


@hookspec
def miscore_register_subfunctions() -> list[type[Subfunction]]:
    """Register preprocessing subfunctions (``Subfunction`` subclasses).

    Called when the registry is built (see ``miscore_register_io``). A subfunction's
    ``name`` is what configs put in
    their ``preprocessing`` list.

    Example::

        @miscore.hookimpl
        def miscore_register_subfunctions():
            return [Clip, ZScore]
    """


@hookspec
def miscore_register_augmentations() -> list[type[Augmentation]]:
    """Register training-time augmentations (``Augmentation`` subclasses).

    Called when the registry is built (see ``miscore_register_io``). Each augmentation takes
    its randomness from the
    generator it is given, never from global state.

    Example::

        @miscore.hookimpl
        def miscore_register_augmentations():
            return [RandomFlip]
    """


@hookspec
def miscore_register_architectures() -> list[type[Architecture]]:
    """Register network architectures (``Architecture`` subclasses that build Keras models).

    Called when the registry is built (see ``miscore_register_io``). Import Keras inside
    ``build``, not at module
    level, so that the CLI starts without loading TensorFlow.

    Example::

        @miscore.hookimpl
        def miscore_register_architectures():
            return [UNet3D]
    """


@hookspec
def miscore_register_losses() -> list[type[Loss]]:
    """Register training losses (``Loss`` subclasses whose ``build`` returns a Keras loss).

    Called when the registry is built (see ``miscore_register_io``).

    Example::

        @miscore.hookimpl
        def miscore_register_losses():
            return [TverskyLoss]
    """


@hookspec
def miscore_register_metrics() -> list[type[Metric]]:
    """Register evaluation metrics (``Metric`` subclasses computed per case and class).

    Called when the registry is built (see ``miscore_register_io``).

    Example::

        @miscore.hookimpl
        def miscore_register_metrics():
            return [Dice, Hausdorff95]
    """


@hookspec
def miscore_register_evaluators() -> list[type[Evaluator]]:
    """Register validation schemes (``Evaluator`` subclasses that split case ids into folds).

    Called when the registry is built (see ``miscore_register_io``).

    Example::

        @miscore.hookimpl
        def miscore_register_evaluators():
            return [KFold]
    """


@hookspec
def miscore_register_layouts() -> list[type[DatasetLayout]]:
    """Register dataset layouts (``DatasetLayout`` subclasses): how a folder makes cases.

    Called when the registry is built. ``data.layout: auto`` tries each layout's ``detect``,
    highest ``detect_priority`` first, ties by name (bundled: msd 40, image2d 30, cases 20,
    dicom 10, files -10); ``data.layout: NAME`` uses one by name.

    Example::

        @miscore.hookimpl
        def miscore_register_layouts():
            return [BidsLayout]
    """


@hookspec
def miscore_register_samplers() -> list[type[Sampler]]:
    """Register patch samplers (``Sampler`` subclasses) for ``patching.sampler``.

    Called when the registry is built. A sampler chooses the training windows of the
    ``random`` and ``slice`` modes; the default one is named by ``miscore_defaults``.

    Example::

        @miscore.hookimpl
        def miscore_register_samplers():
            return [BoundarySampler]
    """


@hookspec
def miscore_register_callbacks() -> list[type[Callback]]:
    """Register Keras callback builders (``Callback`` subclasses) for ``training.callbacks``.

    Called when the registry is built.

    Example::

        @miscore.hookimpl
        def miscore_register_callbacks():
            return [CsvLogger]
    """


@hookspec
def miscore_register_lr_schedules() -> list[type[LRSchedule]]:
    """Register learning-rate schedules (``LRSchedule`` subclasses) for ``training.lr_schedule``.

    Called when the registry is built.

    Example::

        @miscore.hookimpl
        def miscore_register_lr_schedules():
            return [CosineSchedule]
    """


@hookspec
def miscore_register_postprocessors() -> list[type[Postprocessor]]:
    """Register prediction postprocessors (``Postprocessor`` subclasses).

    Called when the registry is built; ``inference.postprocessing`` lists the ones to run.

    Example::

        @miscore.hookimpl
        def miscore_register_postprocessors():
            return [FillHoles]
    """


@hookspec
def miscore_register_output_formats() -> dict[str, dict[str, Any]]:
    """Name IO configurations that ``miscore predict --format NAME`` can write with.

    Called when the registry is built. Return ``{format name: {name: IO name, **params}}``;
    a format named twice goes to the plugin called first (see "Name clashes" in the guide).

    Example::

        @miscore.hookimpl
        def miscore_register_output_formats():
            return {"dicom-seg": {"name": "dicom", "output": "dicom-seg"}}
    """


@hookspec
def miscore_register_models() -> list[ModelEntry | tuple[str, Path]]:
    """Register trained models that the plugin's package ships, by name.

    Called when the registry is built. Return ``miscore.ModelEntry(name, path, card)`` items
    (or ``(name, path)`` tuples): ``path`` is a model folder written by ``miscore train`` or a
    ``.miscore`` package inside the installed package (weights travel in the wheel; nothing
    is downloaded at run time), ``card`` what ``miscore models`` shows (``task``, ``classes``,
    ``license``...). ``miscore predict NAME`` and ``miscore.load_model(NAME)`` then find it;
    an existing path of the same name wins over a registered name. A path that does not exist
    is the plugin's failure (shown by ``miscore models`` and ``miscore plugins``); a name two
    plugins register goes to the plugin called first (see "Name clashes" in the guide).

    Example::

        from importlib.resources import files

        @miscore.hookimpl
        def miscore_register_models():
            return [
                miscore.ModelEntry(
                    "liver-ct",
                    files(__package__) / "liver-ct.miscore",
                    card={"task": "liver segmentation in CT", "license": "CC-BY-4.0"},
                )
            ]
    """


# --- defaults: what a config leaves out -------------------------------------------------


@hookspec
def miscore_defaults() -> dict[str, Any]:
    """Supply defaults for what a config leaves out.

    Called when the registry is built. Return any of the keys ``architecture`` (a component entry
    ``{name, **params}``), ``loss`` (an entry), ``augmentation`` (the list of entries
    ``augmentation: default`` stands for), ``sampler`` (an entry, used when ``patching.sampler`` is
    None), ``metrics`` (the metric entries a report has when neither the command nor
    ``evaluation.metrics`` names any) and ``evaluator`` (the ``miscore cv`` scheme when none
    is given). Each key is taken from the first plugin that gives it, in
    pluggy's call order: ``tryfirst`` first, then the plugin registered last. The bundled plugins
    mark their defaults ``trylast``, so any other plugin wins.

    Example::

        @miscore.hookimpl(tryfirst=True)
        def miscore_defaults():
            return {"augmentation": [{"name": "flip", "p": 1.0}, {"name": "my_noise"}]}
    """


@hookspec
def miscore_plan_choices(ndim: int, thick_axis: int | None) -> dict[str, Any]:
    """Supply the components ``miscore plan`` writes into a planned config.

    Called by the planner. Return any of the keys ``architecture`` (an entry; the planner adds the
    ``depth`` and ``filters`` it sized, when the architecture takes them), ``loss``,
    ``augmentation`` (a list of entries), ``lr_schedule`` (an entry), and ``reasons`` (``{config
    path: why}`` comments for the YAML). Keys are merged as for ``miscore_defaults``: the first
    plugin to give one wins; ``reasons`` merge per path, and the reasons of a plugin none of whose
    choices is used are dropped with them. The bundled plugins answer ``trylast``; with no
    ``architecture`` or ``loss`` from any plugin, planning fails and says so.

    Args:
        ndim: spatial dimensions of the planned network's input (2 or 3).
        thick_axis: the axis whose spacing is over 3x the others (rotate in-plane), or None.

    Example::

        @miscore.hookimpl(tryfirst=True)
        def miscore_plan_choices(ndim):
            return {"loss": {"name": "focal"}, "reasons": {"model.loss": "sparse lesions"}}
    """


@hookspec
def miscore_register_commands(app: typer.Typer) -> None:
    """Add subcommands to the ``miscore`` command line.

    Called once when the CLI starts, before arguments are parsed; ``miscore plugins`` lists
    the commands each plugin added. Keep imports inside the
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


__all__ = ["REGISTRATION_HOOKS", "hookimpl", "hookspec"]
