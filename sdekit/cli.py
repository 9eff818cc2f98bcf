"""The ``sdekit`` command line.

Commands are noun-verb (``sdekit samplers list``, ``sdekit samplers show NAME``,
``sdekit plugins``, ``sdekit sample``); every listing takes ``--json``. The
registry is built once per invocation by :func:`sdekit.registry.load_registry`
from the group options (``--plugin``, ``--strict-plugins``, ...), never at import.

Errors: every :class:`sdekit.errors.SdekitError` (and every usage error) ends as
one message on stderr and exit status 2; ``--debug`` adds the traceback. Any
other exception is a bug: one message, exit status 1, traceback with ``--debug``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from . import __version__
from .errors import SdekitError
from .samplers.base import KINDS

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}

#: seeds of the two exact sample sets that ``sample`` compares against (fixed, so
#: runs with different samplers or seeds are measured against the same set)
EXACT_SEEDS = (1_000_003, 1_000_033)


# -- errors -------------------------------------------------------------------------

class CLIError(click.ClickException):
    """One line on stderr (``Error: ...``) and an exit status (2: a user error)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class SdekitGroup(click.Group):
    """The root group: records the command line and turns exceptions into messages."""

    def make_context(self, info_name, args, parent=None, **extra):
        argv = list(args)
        ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta["sdekit.argv"] = argv  # meta is shared with every sub-context
        return ctx

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if ctx.params.get("debug"):
                click.echo(traceback.format_exc().rstrip(), err=True)
            raise as_cli_error(err) from None


def as_cli_error(err: Exception) -> CLIError:
    """A user error (SdekitError, or an OSError such as a directory that cannot be
    written) exits with status 2; anything else is a bug and exits with 1."""
    if isinstance(err, (SdekitError, OSError)):
        return CLIError(str(err), 2)
    return CLIError(f"unexpected {type(err).__name__}: {err} (a bug in sdekit or in a plugin; "
                    f"rerun with --debug to see the traceback)", 1)


# -- parameter types ----------------------------------------------------------------

def parse_seeds(text: str, limit: int = 10_000_000) -> list[int]:
    """``"0-63"``, ``"0,5,7"`` or ``"0-3,10"`` -> a list of distinct non-negative seeds."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if dash else int(lo)
        except ValueError:
            raise ValueError(f"{part!r} is not a seed or a range of seeds; write e.g. 0-63 or 0,5,7") from None
        if last < first:
            raise ValueError(f"the range {part!r} runs backwards; write {last}-{first}")
        if len(seeds) + last - first + 1 > limit:
            raise ValueError(f"{text!r} gives more than {limit} seeds")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        dup = next(s for i, s in enumerate(seeds) if s in seeds[:i])
        raise ValueError(f"seed {dup} appears twice in {text!r}")
    return seeds


class SeedList(click.ParamType):
    name = "seeds"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_seeds(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


class KeyValue(click.ParamType):
    name = "key=value"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, eq, val = value.partition("=")
        if not eq or not key.strip():
            self.fail(f"expected KEY=VALUE, got {value!r}", param, ctx)
        return key.strip(), val


# -- models ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Model:
    """What ``sample`` needs from a model, whatever it is (an oracle today, a checkpoint later).

    ``score_fn(sde)`` returns the score function in sdekit's contract under that
    SDE; ``exact(n, seed)`` draws n exact samples (B, *item_shape) when the
    model is an exact oracle, and is None otherwise.
    """

    spec: str
    item_shape: tuple[int, ...]
    score_fn: Callable
    exact: Callable | None = None
    description: str = ""
    #: classes the score function is conditional on (``y=``); 0 for none
    num_classes: int = 0
    #: the label value meaning "no class" (None: leave ``y`` out, as the oracle does)
    null_label: Any = None
    #: ``classifier(sde)`` -> a noise-aware classifier ``(x, t) -> (B, K)`` logits, or None
    classifier: Callable | None = None
    #: ``exact_class(k)`` -> ``exact(n, seed)`` for class k only, or None
    exact_class: Callable | None = None
    #: ``exact_law(k)`` -> the exact :class:`~sdekit.oracle.GaussianMixture` (of class k; all for None)
    exact_law: Callable | None = None
    #: the SDE the model was trained on (a checkpoint), or None: any SDE (an exact oracle)
    sde: Any = None
    #: names of the classes, when known
    classes: tuple[str, ...] = ()
    #: whether ``score_fn`` takes ``y`` (else classes are reached by classifier guidance only)
    conditional: bool = True

    @property
    def is_image(self) -> bool:
        return len(self.item_shape) == 3


def _gmm_model(spec: str) -> Model:
    import torch

    from .guidance import oracle_classifier
    from .oracle import GaussianMixture, named_mixture

    gmm = named_mixture(spec)

    def exact_for(mix):
        return lambda n, seed: mix.sample(n, torch.Generator().manual_seed(seed))

    def law(k: int | None):
        return gmm if k is None else GaussianMixture([1.0], gmm.means[k:k + 1], gmm.stds[k:k + 1], gmm.item_shape)

    return Model(f"gmm:{spec}", gmm.item_shape, gmm.score_fn, exact_for(gmm), repr(gmm),
                 num_classes=gmm.num_components, classifier=lambda sde: oracle_classifier(gmm, sde),
                 exact_class=lambda k: exact_for(law(k)), exact_law=law)


def _ckpt_model(path: Path, device, classifier_path: Path | None = None) -> Model:
    """The EMA network of a training run (``--ckpt``), with an optional noise-aware classifier run."""
    from .train import load_run

    run = load_run(path, device)
    if run.score_fn is None:
        raise SdekitError(f"{run.path} is a noise-aware classifier, not a score model: sample from a score "
                          f"model's run with --ckpt and give this one as --classifier")
    classifier = None
    if classifier_path is not None:
        clf = load_run(classifier_path, device)
        if clf.classifier_fn is None:
            raise SdekitError(f"--classifier {classifier_path}: {clf.path} is a score model, not a classifier "
                              f"(train one with a config whose model.arch is 'classifier')")
        if clf.config.sde != run.config.sde:
            raise SdekitError(f"--classifier {classifier_path} was trained on the SDE {clf.config.sde}, the model "
                              f"on {run.config.sde}: a noise-aware classifier must see the model's noise levels")
        if run.conditional and clf.config.model.num_classes != run.config.model.num_classes:
            raise SdekitError(f"--classifier {classifier_path} has {clf.config.model.num_classes} classes, the "
                              f"model {run.config.model.num_classes}")
        classifier = lambda sde: clf.classifier_fn  # noqa: E731 (trained on the model's SDE, checked above)
    num_classes = run.config.model.num_classes if run.conditional else 0
    if classifier is not None:
        num_classes = clf.config.model.num_classes
    return Model(f"ckpt:{run.path}", run.item_shape, lambda sde: run.score_fn, None,
                 f"{run.config.model.arch} at step {run.step} ({run.path})", num_classes=num_classes,
                 null_label=run.null_label, classifier=classifier, sde=run.sde, classes=run.classes,
                 conditional=run.conditional)


#: ``--model KIND:SPEC`` kinds; ``--ckpt`` builds a Model from a training run.
MODEL_KINDS: dict[str, Callable[[str], Model]] = {"gmm": _gmm_model}
MODEL_HELP = "gmm:NAME[:key=value,...] is an exact Gaussian-mixture oracle (ring8, grid9, random:dim=16)"


def load_model(text: str) -> Model:
    """The model named by ``--model KIND:SPEC``."""
    from .oracle import MIXTURES

    kind, _, spec = text.partition(":")
    if kind not in MODEL_KINDS:
        hint = f"did you mean 'gmm:{text}'? " if kind in MIXTURES else ""
        raise SdekitError(f"unknown model kind {kind!r} in --model {text!r} (valid kinds: "
                          f"{', '.join(MODEL_KINDS)}); {hint}--model takes KIND:SPEC, e.g. gmm:ring8")
    if not spec:
        raise SdekitError(f"--model {text!r} needs a spec after '{kind}:', e.g. gmm:ring8 "
                          f"(mixtures: {', '.join(MIXTURES)})")
    try:
        return MODEL_KINDS[kind](spec)
    except (TypeError, ValueError) as err:
        if isinstance(err, SdekitError):
            raise
        raise SdekitError(f"bad --model {text!r}: {err}") from err


# -- state shared by the commands -----------------------------------------------------

@dataclass
class State:
    """The group options; builds the registry once, when a command first needs it."""

    plugins: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    strict: bool | None = None
    autoload: bool | None = None
    trace: bool = False
    debug: bool = False
    _registry: Any = None

    def registry(self, warn: bool = True):
        from .registry import load_registry

        if self._registry is None:
            self._registry = load_registry(self.plugins, autoload=self.autoload, disable=self.disable,
                                           strict=self.strict, trace=self.trace)
            for info in self._registry.plugins:
                if warn and info.status == "broken":
                    last = info.error.splitlines()[-1] if info.error else "unknown error"
                    click.echo(f"warning: plugin {info.name!r} is broken and was skipped ({last}); "
                               f"see 'sdekit plugins'", err=True)
        return self._registry


def _json_safe(obj):
    """inf and nan as strings: JSON has no literal for them (strict parsers reject Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _dump(obj) -> None:
    click.echo(json.dumps(_json_safe(obj), indent=2, default=str, allow_nan=False))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns; the last one is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


# -- the group --------------------------------------------------------------------------

@click.group(cls=SdekitGroup, context_settings=CONTEXT_SETTINGS)
@click.option("--plugin", "plugins", metavar="PATH_OR_MODULE", multiple=True,
              help="Load a plugin: a .py file or an importable module (repeatable; "
                   "also $SDEKIT_PLUGINS, comma-separated).")
@click.option("--disable-plugin", "disable", metavar="NAME", multiple=True,
              help="Do not load the plugin of this name, as 'sdekit plugins' shows it (repeatable).")
@click.option("--strict-plugins", is_flag=True,
              help="A broken plugin is an error, not a warning (also $SDEKIT_STRICT_PLUGINS=1).")
@click.option("--no-plugin-autoload", is_flag=True,
              help="Skip plugins installed as entry points (also $SDEKIT_DISABLE_PLUGIN_AUTOLOAD=1).")
@click.option("--trace-plugins", is_flag=True, help="Print every plugin hook call to stderr.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
@click.version_option(__version__, "--version", prog_name="sdekit")
@click.pass_context
def main(ctx, plugins, disable, strict_plugins, no_plugin_autoload, trace_plugins, debug):
    """Score-based generative modelling with SDEs: list samplers and plugins, draw samples.

    \b
    sdekit samplers list
    sdekit samplers show pc
    sdekit sample --model gmm:ring8 --sampler pc -n 5000 --steps 500
    """
    ctx.obj = State(plugins=plugins, disable=disable, strict=True if strict_plugins else None,
                    autoload=False if no_plugin_autoload else None, trace=trace_plugins, debug=debug)


# -- samplers ---------------------------------------------------------------------------

@main.group()
def samplers():
    """List and describe the registered samplers."""


@samplers.command("list")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only this kind.")
@json_option
@click.pass_obj
def samplers_list(state: State, kind, as_json):
    """Every registered sampler, predictor and corrector, and the plugin that gave it."""
    registry = state.registry()
    rows = [{"name": s.name, "kind": s.kind, "stochastic": s.stochastic, "evals_per_step": s.evals_per_step,
             "recommended_steps": s.recommended_steps, "summary": s.summary, "plugin": registry.owner(s.name)}
            for s in registry if kind is None or s.kind == kind]
    if as_json:
        return _dump(rows)
    click.echo(_table(["NAME", "KIND", "STOCHASTIC", "EVALS/STEP", "STEPS", "PLUGIN", "SUMMARY"], [
        [r["name"], r["kind"], "yes" if r["stochastic"] else "no",
         "adaptive" if r["evals_per_step"] is None else r["evals_per_step"], r["recommended_steps"],
         r["plugin"], r["summary"]] for r in rows]))


@samplers.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def samplers_show(state: State, name, as_json):
    """What NAME is, and its options (set them with 'sdekit sample -o KEY=VALUE')."""
    registry = state.registry()
    spec = registry.get(name)
    desc = {**spec.describe(), "plugin": registry.owner(name),
            "components": {role: {"kind": kind, "choices": ["none", *registry.names(kind)]}
                           for role, kind in spec.components.items()}}
    if as_json:
        return _dump(desc)
    evals = "adaptive" if desc["evals_per_step"] is None else desc["evals_per_step"]
    lines = [f"{desc['name']}: {desc['summary']}", "",
             f"  kind               {desc['kind']}",
             f"  stochastic         {'yes' if desc['stochastic'] else 'no'}",
             f"  evals per step     {evals}",
             f"  recommended steps  {desc['recommended_steps']} ({desc['recommended_schedule']} grid)",
             f"  requires           {', '.join(desc['requires']) or '-'}",
             f"  api version        {desc['api_version']}",
             f"  plugin             {desc['plugin']}"]
    if spec.kind != "sampler":
        other = "corrector" if spec.kind == "predictor" else "predictor"
        lines.append(f"  runs as            pc with {other}=none (--sampler {name}), "
                     f"or -o {spec.kind}={name} to pc")
    lines += ["", "options (-o KEY=VALUE):" if desc["options"] else "options: none"]
    for opt in desc["options"]:
        choices = opt["choices"] or desc["components"].get(opt["name"], {}).get("choices")
        extra = [f"one of: {', '.join(map(str, choices))}"] if choices else []
        extra += [f"{opt['bounds']}"] if opt["bounds"] else []
        lines.append(f"  {opt['name']}: {opt['type']} = {opt['default']!r}"
                     + (f"  ({'; '.join(extra)})" if extra else ""))
        if opt["help"]:
            lines.append(f"      {opt['help']}")
    click.echo("\n".join(lines))


# -- plugins ----------------------------------------------------------------------------

@main.command()
@json_option
@click.pass_obj
def plugins(state: State, as_json):
    """Every plugin: origin, version, status, samplers.

    A broken plugin is listed with its error; the others keep working.
    """
    infos = state.registry(warn=False).plugins
    if as_json:
        return _dump([dataclasses.asdict(i) for i in infos])
    lines = _table(["NAME", "VERSION", "ORIGIN", "STATUS", "SAMPLERS"], [
        [i.name, i.version or "-", i.origin, i.status, ", ".join(i.samplers) or "-"] for i in infos]).splitlines()
    out = lines[:1]
    for info, line in zip(infos, lines[1:]):
        out.append(line)
        if info.error:
            first, *rest = info.error.splitlines()
            out += [f"    error: {first}", *(f"           {line}" for line in rest)]
    counts = {s: sum(i.status == s for i in infos) for s in ("ok", "broken", "disabled")}
    out += ["", f"{len(infos)} plugins: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    click.echo("\n".join(out))


# -- train ------------------------------------------------------------------------------

@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              default=None, show_default="WORKDIR/config.toml with --resume",
              help="The run's TOML config (see configs/); every key left out takes its default.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR", required=True,
              help="Where checkpoints, TensorBoard logs (DIR/tb), samples and the resolved config go.")
@click.option("--set", "overrides", metavar="SECTION.KEY=VALUE", multiple=True,
              help="Override one config key, e.g. --set train.steps=500 (repeatable; TOML values).")
@click.option("--resume", is_flag=True,
              help="Continue from DIR's latest checkpoint (N steps + resume + M steps = N + M steps).")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit without training.")
@click.option("--progress/--no-progress", default=None, show_default="on when stderr is a terminal",
              help="Progress bar on stderr instead of one log line per train.log_every steps.")
@json_option
@click.pass_obj
def train(state: State, config_path, workdir, overrides, resume, print_config, progress, as_json):
    """Train a score network (or a noise-aware classifier) by denoising score matching.

    \b
    sdekit train --config configs/digits_vp.toml --workdir runs/digits_vp
    sdekit train --workdir runs/digits_vp --resume --set train.steps=4000
    tensorboard --logdir runs

    A workdir that already holds checkpoints is never overwritten: continue it
    with --resume or choose another. Under torchrun the run is data parallel
    (one global batch; only rank 0 writes).
    """
    from .config import dump_config, load_config
    from .train import RunConfig, find_checkpoint
    from .train import train as run_training

    if config_path is None:
        if not resume:
            raise click.UsageError("give the run's config with --config FILE (e.g. configs/digits_vp.toml)")
        config_path = workdir / "config.toml"
        if not config_path.is_file():
            raise SdekitError(f"--resume without --config reads {config_path}, which does not exist; "
                              f"give --config FILE")
    config = load_config(config_path, RunConfig, overrides)
    if print_config:
        return click.echo(dump_config(config), nl=False)
    log = (lambda line: None) if as_json else (lambda line: click.echo(line, err=True))
    try:
        summary = run_training(config, workdir, resume=resume, progress=progress, log=log)
    except KeyboardInterrupt:
        try:
            kept = f"the latest checkpoint is {find_checkpoint(workdir)}"
        except SdekitError:
            kept = "no checkpoint was written yet"
        raise CLIError(f"interrupted: {kept}; continue with sdekit train --workdir {workdir} --resume", 130) \
            from None
    if as_json:
        return _dump({k: v for k, v in summary.items() if k != "history"} | {"history": summary["history"]})
    if summary["checkpoint"]:
        click.echo(f"checkpoint   {summary['checkpoint']}\n"
                   f"tensorboard  tensorboard --logdir {workdir / 'tb'}\n"
                   f"sample       sdekit sample --ckpt {workdir} --out {workdir / 'samples' / 'cli'}")


# -- sample -----------------------------------------------------------------------------

def _sampler_options(pairs) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise SdekitError(f"-o {key}=... is given twice ({options[key]!r} and {value!r})")
        options[key] = value
    return options


def _output_paths(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """DIR/samples.npz and DIR/samples.png (or FILE.npz and FILE.png for ``--out FILE.png``),
    unless an earlier run left them and ``overwrite`` is off."""
    if out.suffix.lower() == ".png":
        paths, where = (out.with_suffix(".npz"), out), out.parent
    elif out.suffix.lower() in (".npz", ".jpg", ".jpeg"):
        raise SdekitError(f"--out {out}: give a directory or a .png file (the .npz is written beside it)")
    else:
        if out.exists() and not out.is_dir():
            raise SdekitError(f"--out {out} is a file, not a directory; give a directory or FILE.png")
        paths, where = (out / "samples.npz", out / "samples.png"), out
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise SdekitError(f"{where} already holds {' and '.join(existing)} from an earlier run; "
                          f"pass --overwrite to replace them, or choose another --out")
    return paths


def _compare_to_exact(model: Model, samples, class_: int | None = None):
    """For an exact oracle: (exact samples, metrics) with the sliced Wasserstein distance
    to exact samples of the same size (of class ``class_`` when given) and its noise
    floor, and the unbiased squared MMD to the exact law (0 in expectation for exact
    samples); (None, None) otherwise."""
    from .metrics import mixture_mmd, sliced_wasserstein

    exact_fn = model.exact if class_ is None or model.exact_class is None else model.exact_class(class_)
    if exact_fn is None:
        return None, None
    exact, other = (exact_fn(len(samples), s) for s in EXACT_SEEDS)
    metrics = {"sliced_wasserstein": sliced_wasserstein(samples, exact),
               "noise_floor": sliced_wasserstein(other, exact), "exact_seeds": list(EXACT_SEEDS),
               "exact_class": class_}
    if model.exact_law is not None and len(samples) >= 3 and bool(samples.isfinite().all()):
        mmd = mixture_mmd(samples, model.exact_law(class_))
        metrics.update(mmd2=mmd.mmd2, mmd2_se=mmd.se)
    return exact, metrics


def _guided_score(model: Model, sde, n: int, device, class_, guidance: str, scale: float, convention):
    """The score function for --class/--guidance, the conditioning, and a record of the choice."""
    import torch

    from .guidance import classifier_free_guidance, classifier_guidance

    score_fn = model.score_fn(sde)
    if class_ is None:
        if guidance != "none":
            raise click.UsageError(f"--guidance {guidance} steers toward a class: give it with --class K")
        return score_fn, None, None
    if model.num_classes == 0:
        hint = "" if model.exact is not None else " (for a checkpoint trained without labels, give a noise-aware " \
                                                   "classifier with --classifier RUN and --guidance classifier)"
        raise SdekitError(f"--class {class_}: the model {model.spec} is not conditional on a class{hint}")
    if class_ >= model.num_classes:
        raise SdekitError(f"--class {class_} is out of range: the model {model.spec} has classes "
                          f"0-{model.num_classes - 1}")
    if guidance != "classifier" and not model.conditional:
        raise SdekitError(f"--class {class_} --guidance {guidance}: the model {model.spec} was trained without "
                          f"class labels; steer it with --guidance classifier and a noise-aware classifier "
                          f"(--classifier RUN)")
    cond = {"y": torch.full((n,), class_, dtype=torch.long, device=device)}
    record = {"class": class_, "kind": guidance, "scale": scale, "convention": convention}
    if guidance == "cfg":
        if convention is None:
            raise click.UsageError("--guidance cfg needs --guidance-convention: s (uncond + s (cond - uncond), "
                                   "s=1 conditional) or w ((1 + w) cond - w uncond, w=0 conditional)")
        score_fn = classifier_free_guidance(score_fn, scale, convention=convention, null=model.null_label)
    elif guidance == "classifier":
        if model.classifier is None:
            raise SdekitError(f"--guidance classifier: the model {model.spec} has no noise-aware classifier")
        uncond = model.score_fn(sde)
        null = model.null_label
        base = uncond if null is None or not model.conditional else (lambda x, t, **c: uncond(x, t, y=null, **c))
        score_fn = classifier_guidance(base, model.classifier(sde), scale)
    elif scale != 1.0:
        raise click.UsageError("--guidance-scale needs --guidance cfg or classifier")
    return score_fn, cond, record


def _constraint(model: Model, image_path, mask_path, gray_path):
    """The inpainting or colorization constraint of --image/--inpaint or --colorize, or None."""
    from .controllable import Colorize, Inpaint
    from .io import read_image, read_mask

    if gray_path is not None:
        if image_path is not None or mask_path is not None:
            raise click.UsageError("--colorize cannot be combined with --image/--inpaint")
        if len(model.item_shape) != 3:
            raise SdekitError(f"--colorize needs image items (C, H, W); the model {model.spec} has items of "
                              f"shape {model.item_shape}")
        gray = read_image(gray_path)
        if gray.shape[0] != 1:
            gray = gray.mean(0, keepdim=True)
        return Colorize(gray, channels=model.item_shape[0])
    if (image_path is None) != (mask_path is None):
        raise click.UsageError("inpainting needs both --image IMG and --inpaint MASK")
    if image_path is None:
        return None
    return Inpaint(read_image(image_path, model.item_shape), read_mask(mask_path, model.item_shape))


def _check_sde(sde_name: str | None, trained_on, model) -> None:
    """A trained model samples (and scores) under its own SDE: an --sde naming another is an error."""
    if sde_name is not None and sde_name != _sde_name(trained_on):
        raise SdekitError(f"--sde {sde_name}: the model {model} was trained on {trained_on!r}; leave --sde out "
                          f"to use it")


def _sde_name(sde) -> str:
    """``vp``, ``subvp`` or ``ve`` (the --sde name), else the class name."""
    from .sde import SDES

    return next((name for name, cls in SDES.items() if type(sde) is cls), type(sde).__name__)


def _label(prov: dict) -> str:
    parts = [f"{role} {prov[role]['name'] if prov.get(role) else 'none'}"
             for role in ("predictor", "corrector") if role in prov]
    return prov["sampler"] + (f" ({', '.join(parts)})" if parts else "")


@main.command()
@click.option("--model", "model_spec", metavar="KIND:SPEC", default=None,
              help=f"The model to sample: {MODEL_HELP}.")
@click.option("--ckpt", "ckpt_path", type=click.Path(exists=True, path_type=Path), metavar="RUN", default=None,
              help="Sample a trained model instead: a workdir of 'sdekit train' (its latest checkpoint, EMA "
                   "weights) or a checkpoint file.")
@click.option("--classifier", "classifier_path", type=click.Path(exists=True, path_type=Path), metavar="RUN",
              default=None, help="With --ckpt: a noise-aware classifier run for --guidance classifier.")
@click.option("--sde", "sde_name", type=click.Choice(["vp", "subvp", "ve"]), default=None,
              show_default="vp, or the checkpoint's", help="Forward SDE.")
@click.option("--sampler", metavar="NAME", default=None, show_default="pc, or the checkpoint's [sample] sampler",
              help="A sampler, predictor or corrector (see 'sdekit samplers list').")
@click.option("-n", "--num-samples", type=click.IntRange(min=1), metavar="N", default=None,
              show_default="1000 (64 for images), or one per --seeds", help="Number of samples.")
@click.option("--steps", type=click.IntRange(min=1), metavar="N", default=None,
              show_default="the sampler's recommended steps", help="Time-grid steps.")
@click.option("--schedule", metavar="NAME[:K=V]", default=None, show_default="the sampler's recommended",
              help="Time grid: uniform, logsnr, karras[:rho=7], quadratic or vp_quadratic (sdekit.grids).")
@click.option("--t-min", type=float, metavar="T", default=None, show_default="the SDE's t_min",
              help="Last time of the grid.")
@click.option("-o", "--option", "option_pairs", type=KeyValue(), metavar="KEY=VALUE", multiple=True,
              help="A sampler option, checked by the registry (repeatable; see 'sdekit samplers show NAME').")
@click.option("--seed", type=int, metavar="INT", default=0,
              help="Seed of one generator for the whole batch (under torchrun: the seeds INT, INT+1, ...).")
@click.option("--seeds", type=SeedList(), metavar="LIST", default=None,
              help="One seed per item, e.g. 0-63 or 0,5,7: each item then depends only on its seed.")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N", default=None, show_default="all at once",
              help="Draw in batches of at most N (memory); with --seeds the samples do not change.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if present.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", help="Sampling dtype.")
@click.option("--class", "class_", type=click.IntRange(min=0), metavar="K", default=None,
              help="Condition every sample on class K (a mixture component of a gmm model, a label of a "
                   "checkpoint's data).")
@click.option("--guidance", type=click.Choice(["none", "cfg", "classifier"]), default="none",
              help="With --class: none samples the conditional score; cfg is classifier-free guidance, "
                   "classifier adds a noise-aware classifier's gradient (sdekit.guidance).")
@click.option("--guidance-scale", "--scale", "guidance_scale", type=float, metavar="S", default=1.0,
              help="Guidance scale (cfg: in the --guidance-convention; classifier: 0 unconditional, 1 conditional).")
@click.option("--guidance-convention", type=click.Choice(["s", "w"]), default=None,
              help="Required with --guidance cfg: s (uncond + s (cond - uncond); s=1 conditional) "
                   "or w (Ho and Salimans: (1 + w) cond - w uncond; w=0 conditional).")
@click.option("--image", "image_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              metavar="IMG", default=None, help="Known image for --inpaint (PNG scaled to [-1, 1], or .npy as is).")
@click.option("--inpaint", "mask_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              metavar="MASK", default=None, help="Inpaint --image: MASK's white (non-zero) pixels are kept, "
                                                 "black ones generated.")
@click.option("--colorize", "gray_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              metavar="GRAY", default=None, help="Colorize a gray image (the samples' channel mean is GRAY).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), metavar="DIR|FILE.png",
              default=Path("out/sample"), help="A directory for samples.npz and samples.png (created), or a "
                                               "FILE.png, with FILE.npz beside it.")
@click.option("--overwrite", is_flag=True, help="Replace the .npz / .png of an earlier run.")
@click.option("--progress/--no-progress", default=None, show_default="on when stderr is a terminal",
              help="Progress bar on stderr.")
@json_option
@click.pass_context
def sample(ctx, model_spec, ckpt_path, classifier_path, sde_name, sampler, num_samples, steps, schedule, t_min,
           option_pairs, seed, seeds, batch_size, device, dtype, class_, guidance, guidance_scale,
           guidance_convention, image_path, mask_path, gray_path, out_path, overwrite, progress, as_json):
    """Draw samples from a model and save them with their provenance.

    \b
    sdekit sample --model gmm:ring8 --sampler pc -n 5000 --steps 500
    sdekit sample --ckpt runs/digits_vp --sampler dpm_solver -n 64 --out digits.png
    torchrun --nproc-per-node 4 -m sdekit.cli sample --ckpt runs/X --seeds 0-4095

    Writes samples.npz (arrays 'samples' and 'provenance', a JSON string; load
    it with sdekit.io.load_samples or np.load(allow_pickle=False)) and
    samples.png: an image grid for image models, a scatter plot otherwise.
    Files of an earlier run are never replaced unless --overwrite is given. For
    an exact oracle model it prints the sliced Wasserstein distance to exact
    samples beside the noise floor (the distance between two independent exact
    sets of the same size). Under torchrun the items are split across the
    ranks by their seeds and gathered by rank 0, which writes the one output:
    with a sampler that draws items independently (see 'sdekit samplers show')
    it is the single-process output for the same seeds.
    """
    import torch

    from .api import resolve_device, resolve_sampler
    from .api import sample as draw
    from .grids import make_grid
    from .sde import SDES

    state: State = ctx.obj
    source = ctx.get_parameter_source
    if (model_spec is None) == (ckpt_path is None):
        raise click.UsageError("give the model to sample with --model KIND:SPEC (e.g. --model gmm:ring8) or a "
                               "trained run with --ckpt RUN" if model_spec is None else
                               "give --model or --ckpt, not both")
    if classifier_path is not None and ckpt_path is None:
        raise click.UsageError("--classifier goes with --ckpt (a gmm model has its exact classifier)")
    if seeds is not None and source("seed") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("give --seed or --seeds, not both")
    if seeds is not None and num_samples not in (None, len(seeds)):
        raise click.UsageError(f"-n {num_samples} does not match the {len(seeds)} seeds given by --seeds")
    options = _sampler_options(option_pairs)
    dev = resolve_device(device)
    model = load_model(model_spec) if ckpt_path is None else _ckpt_model(ckpt_path, dev, classifier_path)
    n = len(seeds) if seeds is not None else (num_samples or (64 if model.is_image else 1000))
    registry = state.registry()
    if model.sde is not None:
        _check_sde(sde_name, model.sde, model.spec)
        sde = model.sde
    else:
        sde = SDES[sde_name or "vp"]()
    if sampler is None:  # a checkpoint's [sample] section, else pc
        sampler = "pc"
        if ckpt_path is not None:
            sc = _run_sample_config(ckpt_path)
            sampler, options = sc.sampler, {**sc.options, **options}
            steps = steps or sc.steps or None
            schedule = schedule or (sc.schedule if sc.steps else None)
    # everything the library would reject, before looking at (or writing) outputs
    resolve_sampler(sampler, options, registry)
    spec = registry.get(sampler)
    make_grid(sde, spec.recommended_steps if steps is None else steps, schedule or spec.recommended_schedule, t_min)
    ranks = _Ranks.start(dev)
    mine, seeds = ranks.shard(n, seed, seeds)
    score_fn, cond, guided = _guided_score(model, sde, len(mine), dev, class_, guidance, guidance_scale,
                                           guidance_convention)
    constraint = _constraint(model, image_path, mask_path, gray_path)
    if constraint is not None:
        resolve_sampler(sampler, options, registry)  # the library names the samplers that take a constraint
    npz_path, png_path = _output_paths(out_path, overwrite)

    try:
        result = draw(score_fn, sde, (len(mine), *model.item_shape), sampler, steps=steps, schedule=schedule,
                      t_min=t_min, seed=seed, seeds=mine if seeds is not None else None, batch_size=batch_size,
                      device=dev, dtype=getattr(torch, dtype), cond=cond, constraint=constraint, registry=registry,
                      progress=ranks.rank == 0 and (sys.stderr.isatty() if progress is None else progress),
                      options=options)
        samples = ranks.gather(result.samples.detach())
        ranks.barrier()
    finally:
        ranks.close()
    if samples is None:  # not rank 0: rank 0 writes the output
        return
    result.provenance["guidance"] = guided
    if ranks.world > 1:  # the record of the whole output, not of rank 0's shard
        result.provenance.update(world_size=ranks.world, seeds=seeds, shape=list(samples.shape),
                                 batch_size=batch_size)
    if seeds is not None and not result.provenance["per_item"]:
        click.echo(f"note: {_label(result.provenance)} couples the items of a batch (see 'sdekit samplers show'), "
                   f"so a sample depends on the batch as well as on its seed", err=True)

    exact, metrics = (None, None) if constraint is not None else _compare_to_exact(model, samples, class_)
    argv = ctx.meta.get("sdekit.argv", sys.argv[1:])
    prov = {**result.provenance, "model": model.spec, "command": shlex.join(["sdekit", *argv]),
            "metrics": metrics}
    if model.classes:
        prov["classes"] = list(model.classes)

    npz_path.parent.mkdir(parents=True, exist_ok=True)
    save_outputs(npz_path, png_path, samples, prov, exact, f"{_label(prov)} on {_sde_name(sde)} · "
                 f"{prov['steps']} steps · nfe {result.nfe}", image=model.is_image)

    if as_json:
        return _dump({"samples": str(npz_path), "plot": str(png_path), "nfe": result.nfe,
                      "wall_time_s": result.wall_time, **(metrics or {}), "provenance": prov})
    shape = " x ".join(map(str, samples.shape))
    lines = [f"samples    {npz_path}  ({shape}, {dtype}; provenance inside)",
             f"{'grid' if model.is_image else 'plot':<10} {png_path}",
             f"sampler    {_label(prov)} on {_sde_name(sde)}, {prov['steps']} steps ({prov['schedule']})",
             f"nfe        {result.nfe}",
             f"wall time  {result.wall_time:.2f} s"]
    if metrics is not None:
        of = "" if metrics["exact_class"] is None else f" of class {metrics['exact_class']}"
        lines.append(f"sliced W2  {metrics['sliced_wasserstein']:.4f} to exact samples{of} "
                     f"(noise floor {metrics['noise_floor']:.4f}: two exact sets of {n})")
        if "mmd2" in metrics:
            lines.append(f"MMD^2      {metrics['mmd2']:.2e} +- {metrics['mmd2_se']:.1e} to the exact law{of} "
                         f"(unbiased: 0 +- SE for exact samples)")
    click.echo("\n".join(lines))


def _run_sample_config(path: Path):
    """The [sample] section saved with a training run (its checkpoint's config)."""
    from .checkpoint import load_checkpoint
    from .train import config_from_text, find_checkpoint

    ckpt = find_checkpoint(path)
    return config_from_text(load_checkpoint(ckpt)["config"], f"{ckpt} (its saved config)").sample


def save_outputs(npz_path: Path, png_path: Path, samples, provenance: dict, exact=None, title: str = "", *,
                 image: bool = False) -> None:
    """samples.npz with the provenance, and a picture: an image grid for images, else a scatter plot."""
    from .io import save_image_grid, save_samples, save_scatter

    save_samples(npz_path, samples.numpy(), provenance)
    if image:
        side = samples.shape[-1]
        per_row = math.ceil(math.sqrt(len(samples)))
        save_image_grid(png_path, samples, nrow=per_row, scale=max(1, math.ceil(512 / (per_row * (side + 1)))))
    else:
        save_scatter(png_path, samples.numpy(), None if exact is None else exact.numpy(), title=title)


@dataclass
class _Ranks:
    """The processes of a torchrun launch (RANK, WORLD_SIZE set), or just this one.

    Items are split into contiguous shards by their seeds; rank 0 gathers them
    in order. Without --seeds, the seeds are ``seed, seed + 1, ...`` (one per
    item) whenever there is more than one rank, so that a shard does not depend
    on the number of ranks.
    """

    rank: int = 0
    world: int = 1
    owned: bool = False

    @classmethod
    def start(cls, device) -> "_Ranks":
        import os

        import torch.distributed as dist

        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            return cls(dist.get_rank(), dist.get_world_size(), owned=True)
        return cls(dist.get_rank(), dist.get_world_size())

    def shard(self, n: int, seed: int, seeds: list[int] | None) -> tuple[list[int], list[int] | None]:
        """(this rank's seeds, the seeds of all items or None for one generator)."""
        if self.world > 1 and seeds is None:
            seeds = list(range(seed, seed + n))
        if seeds is None:
            return list(range(n)), None
        if n < self.world:
            raise SdekitError(f"{n} samples cannot be shared by {self.world} processes: draw at least {self.world}")
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        return seeds[lo:hi], seeds

    def gather(self, x):
        """All shards in rank order on rank 0 (a CPU tensor), None on the others."""
        if self.world == 1:
            return x.cpu()
        import torch.distributed as dist

        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object(x.cpu(), parts, dst=0)
        return None if parts is None else __import__("torch").cat(parts)

    def gather_objects(self, obj):
        """Every rank's ``obj`` in rank order on rank 0, None on the others."""
        import torch.distributed as dist

        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, parts, dst=0)
        return parts

    def barrier(self) -> None:
        """Wait for every rank (before tearing down: a rank leaving while another talks can abort gloo)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


# -- likelihood ---------------------------------------------------------------------------

def _likelihood_data(run, data_path: Path | None, split: str, n: int | None):
    """(x, labels, classes, levels, description) of the items to score for a checkpoint."""
    from .data import DataConfig, load_dataset

    base = run.config.data
    if data_path is None:
        cfg = base
    else:
        cfg = DataConfig(name="folder" if data_path.is_dir() else "npy", path=str(data_path),
                         image_size=base.image_size if data_path.is_dir() else None, holdout=base.holdout,
                         seed=base.seed)
    data = load_dataset(cfg)
    train_part, held_out = data.split()
    if split == "held-out" and len(held_out) == 0:
        raise SdekitError(f"the data {cfg.name!r} has no held-out items (data.holdout = {cfg.holdout}); "
                          f"choose --split train or all")
    chosen = {"held-out": held_out, "train": train_part, "all": data}[split]
    if chosen.item_shape != tuple(run.item_shape):
        raise SdekitError(f"the data {cfg.name!r} has items of shape {chosen.item_shape}, but the model "
                          f"{run.path} takes {tuple(run.item_shape)}")
    if n is not None:
        chosen = chosen.head(n)
    what = f"{cfg.name}{'' if cfg.path is None else ' ' + cfg.path}, {split}, {len(chosen)} items"
    return chosen.x, chosen.y, chosen.classes, chosen.levels, what


def _write_results(path: Path, report, provenance: dict) -> None:
    """Per-item results as .npz (arrays and a JSON provenance) or .csv, atomically."""
    import csv
    import io as stdio

    import numpy as np

    from .io import atomic_write

    columns = {"log_likelihood": report.log_likelihood, "bpd": report.bpd,
               "prior_log_prob": report.prior_log_prob, "delta_log_prob": report.delta_log_prob}
    if report.elbo_bpd is not None:
        columns["elbo_bpd"] = report.elbo_bpd
    if report.labels is not None:
        columns = {"label": report.labels, **columns}
    if path.suffix.lower() == ".csv":
        text = stdio.StringIO()
        out = csv.writer(text)
        out.writerow(["index", *columns])
        for i in range(len(report)):
            out.writerow([i, *(c[i] if c.dtype.kind in "iu" else repr(float(c[i])) for c in columns.values())])
        with atomic_write(path) as f:
            f.write(text.getvalue().encode())
    else:
        with atomic_write(path) as f:
            times, delta = report.trajectory
            np.savez(f, **columns, nfe_per_batch=report.nfe, trajectory_times=times, trajectory_delta=delta,
                     provenance=np.array(json.dumps(_json_safe(provenance), default=str), dtype=np.str_))


@main.command()
@click.option("--ckpt", "ckpt_path", type=click.Path(exists=True, path_type=Path), metavar="RUN", default=None,
              help="A trained run (workdir or checkpoint file), EMA weights.")
@click.option("--model", "model_spec", metavar="gmm:SPEC", default=None,
              help="Instead: an exact Gaussian-mixture oracle, scored on its own exact draws and compared with "
                   "its exact log-density.")
@click.option("--sde", "sde_name", type=click.Choice(["vp", "subvp", "ve"]), default=None,
              show_default="vp, or the checkpoint's", help="Forward SDE (for --model).")
@click.option("--data", "data_path", type=click.Path(exists=True, path_type=Path), metavar="PATH", default=None,
              show_default="the run's [data]", help="Score these items instead: a .npy/.npz file or an image folder.")
@click.option("--split", type=click.Choice(["held-out", "train", "all"]), default="held-out",
              help="Which part of the data (data.holdout, data.seed of the run).")
@click.option("-n", "--num-items", "n", type=click.IntRange(min=1), metavar="N", default=None,
              show_default="all (1000 for --model)", help="Score the first N items.")
@click.option("--divergence", type=click.Choice(["hutchinson", "exact"]), default="hutchinson",
              help="Hutchinson-Skilling estimate (unbiased) or the exact trace (D backward passes; D <= 1024).")
@click.option("--probe", type=click.Choice(["rademacher", "gaussian"]), default="rademacher",
              help="Hutchinson probe distribution.")
@click.option("--probes", "num_probes", type=click.IntRange(min=1), default=1, metavar="K",
              help="Hutchinson probes per item, averaged.")
@click.option("--dequantize", type=click.IntRange(min=1), default=1, metavar="K",
              help="Uniform dequantization draws per item (discrete data), averaged.")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=1e-5, metavar="R",
              help="Relative tolerance of the ODE solver.")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=1e-5, metavar="A",
              help="Absolute tolerance of the ODE solver.")
@click.option("--method", default="dopri5", metavar="NAME", help="Adaptive torchdiffeq method (dopri5, bosh3, ...).")
@click.option("--t-min", type=float, metavar="T", default=None, show_default="the SDE's t_min",
              help="Start of the ODE.")
@click.option("--elbo", "with_elbo", is_flag=True, help="Also the continuous-time ELBO (a bound, in bits/dim).")
@click.option("--conditional", is_flag=True,
              help="A class-conditional run: log p(x | y) with each item's label (default: the null class, "
                   "log p(x)).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, metavar="N", help="Items per ODE solve.")
@click.option("--seed", type=int, default=0, metavar="INT", help="Seed of the dequantization and probes.")
@click.option("--logdir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR", default=None,
              show_default="RUN/likelihood", help="TensorBoard directory (tags likelihood/...).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE", default=None,
              show_default="LOGDIR/results.npz", help="Per-item results: .npz or .csv.")
@click.option("--overwrite", is_flag=True, help="Replace the results file of an earlier run.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", help="auto: CUDA if present.")
@click.option("--progress/--no-progress", default=None, show_default="on when stderr is a terminal",
              help="Progress bar with the running mean bits/dim.")
@json_option
@click.pass_context
def likelihood(ctx, ckpt_path, model_spec, sde_name, data_path, split, n, divergence, probe, num_probes, dequantize,
               rtol, atol, method, t_min, with_elbo, conditional, batch_size, seed, logdir, out_path, overwrite,
               device, progress, as_json):
    """Bits/dim of data under a model, through the probability-flow ODE.

    \b
    sdekit likelihood --ckpt runs/digits_vp                  # its held-out digits
    sdekit likelihood --ckpt runs/digits_vp --elbo --probes 4 -n 200
    sdekit likelihood --model gmm:ring8 --divergence exact   # against the exact log-density
    tensorboard --logdir runs                                # likelihood/* beside training

    Discrete data (the digits' 17 levels, 8-bit images) are dequantized and
    reported in bits/dim as in Song et al. 2021; continuous data in
    -log p(x) / (D ln 2). Writes per-item results (.npz or .csv) and TensorBoard
    tags at the checkpoint's training step, so checkpoints of one run form a
    curve and runs compare side by side. Under torchrun each rank integrates its
    own batches and rank 0 writes the one result.
    """
    import torch

    from .analysis import analyze, write_tensorboard
    from .api import resolve_device
    from .sde import SDES

    if (model_spec is None) == (ckpt_path is None):
        raise click.UsageError("give a trained run with --ckpt RUN or an oracle with --model gmm:SPEC"
                               if model_spec is None else "give --ckpt or --model, not both")
    dev = resolve_device(device)
    exact = None
    if ckpt_path is not None:
        from .train import load_run

        run = load_run(ckpt_path, dev)
        if run.score_fn is None:
            raise SdekitError(f"{run.path} is a noise-aware classifier, which has no likelihood; give a score "
                              f"model's run")
        _check_sde(sde_name, run.sde, run.path)
        if conditional and not run.conditional:
            raise SdekitError(f"--conditional: the run {run.path} was trained without class labels")
        x, labels, classes, levels, what = _likelihood_data(run, data_path, split, n)
        sde, score_fn, step = run.sde, run.score_fn, run.step
        if run.conditional and not conditional:
            null = run.null_label
            score_fn = lambda x_, t_, **c: run.score_fn(x_, t_, y=null, **c)  # noqa: E731
        logdir = logdir or run.path.parent.parent / "likelihood"
        model_name = f"ckpt:{run.path}"
    else:
        if data_path is not None or conditional:
            raise click.UsageError("--data and --conditional go with --ckpt")
        model = load_model(model_spec)
        if model.exact is None:
            raise SdekitError(f"--model {model_spec}: only exact oracles (gmm:...) can be scored without --ckpt")
        from .oracle import named_mixture

        gmm = named_mixture(model_spec.partition(":")[2])
        sde = SDES[sde_name or "vp"]()
        x, labels = gmm.sample(n or 1000, torch.Generator().manual_seed(seed), dtype=torch.float64,
                               return_labels=True)
        t0 = sde.t_min if t_min is None else t_min
        x = gmm.sample_t(len(x), t0, sde, torch.Generator().manual_seed(seed), dtype=torch.float64) \
            if t0 > 0 else x
        exact = gmm.log_prob(x, t0, sde)
        score_fn, classes, levels, step = gmm.score_fn(sde), (), None, 0
        what = f"{len(x)} exact draws from p_t_min of {model_spec}"
        labels = None
        model_name = model.spec
    out_path = out_path or (None if logdir is None else logdir / "results.npz")
    if out_path is not None and out_path.exists() and not overwrite:
        raise SdekitError(f"{out_path} exists from an earlier run; pass --overwrite or choose another --out")
    if out_path is not None and out_path.suffix.lower() not in (".npz", ".csv"):
        raise SdekitError(f"--out {out_path}: write .npz or .csv")

    ranks = _Ranks.start(dev)
    try:
        report = analyze(sde, score_fn, x.to(dev), labels=None if labels is None else labels.to(dev),
                         classes=classes, levels=levels, batch_size=batch_size, seed=seed, dequantize=dequantize,
                         with_elbo=with_elbo, label_key="y" if conditional else None, rank=ranks.rank,
                         world=ranks.world, gather=ranks.gather_objects,
                         progress=sys.stderr.isatty() if progress is None else progress,
                         rtol=rtol, atol=atol, method=method, divergence=divergence, probe=probe,
                         num_probes=num_probes, t_min=t_min)
        ranks.barrier()
    finally:
        ranks.close()
    if report is None:
        return
    summary = report.summary()
    if exact is not None:
        err = abs(torch.as_tensor(report.log_likelihood) - exact.cpu()).mean().item() / report.info["dim"]
        summary.update(exact_nll=float(-exact.mean()), abs_error_nats_per_dim=err)
    argv = ctx.meta.get("sdekit.argv", sys.argv[1:])
    prov = {"model": model_name, "data": what, "step": step, "summary": summary, "world_size": ranks.world,
            "command": shlex.join(["sdekit", *argv]), "versions": {"sdekit": __version__, "torch": torch.__version__}}
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _write_results(out_path, report, prov)
    if logdir is not None:
        write_tensorboard(report, logdir, step)
    if as_json:
        return _dump({"results": None if out_path is None else str(out_path),
                      "logdir": None if logdir is None else str(logdir), **summary, "data_used": what})
    unit = "bits/dim" + ("" if levels is None else f" (dequantized, {levels} levels)")
    lines = [f"data       {what}",
             f"bpd        {summary['bpd']:.4f} +- {summary['bpd_se']:.4f} {unit}",
             f"nll        {summary['nll']:.3f} nats per item",
             f"nfe        {summary['nfe_mean']:.1f} per batch ({divergence} divergence, {method}, "
             f"rtol {rtol:g}, atol {atol:g})"]
    if with_elbo:
        lines.append(f"elbo       {summary['elbo_bpd']:.4f} +- {summary['elbo_bpd_se']:.4f} bits/dim "
                     f"(a bound on the reverse-SDE model; the ODE value above is its own model's)")
    if exact is not None:
        lines.append(f"exact      nll {summary['exact_nll']:.3f} nats; mean |error| "
                     f"{summary['abs_error_nats_per_dim']:.2e} nats/dim")
    if "bpd_by_class" in summary:
        lines.append("by class   " + "  ".join(f"{k}: {v:.3f}" for k, v in summary["bpd_by_class"].items()))
    if out_path is not None:
        lines.append(f"results    {out_path}")
    if logdir is not None:
        lines.append(f"tensorboard  tensorboard --logdir {logdir}")
    click.echo("\n".join(lines))


# -- eval -------------------------------------------------------------------------------

def _training_leak(prov: dict) -> str | None:
    """A warning when the samples' checkpoint was trained on the digits the evaluation holds out."""
    from .evaluate import DIGITS_HOLDOUT, DIGITS_SEED
    from .train import config_from_text

    model = str(prov.get("model", ""))
    if not model.startswith("ckpt:"):
        return None
    try:
        from .checkpoint import load_checkpoint

        data = config_from_text(load_checkpoint(model[len("ckpt:"):])["config"], model).data
    except SdekitError:
        return None  # the checkpoint moved or changed: nothing to check against
    if data.name == "digits" and (data.holdout, data.seed) != (DIGITS_HOLDOUT, DIGITS_SEED):
        return (f"the model was trained with data.holdout = {data.holdout}, data.seed = {data.seed}, not the "
                f"evaluation split ({DIGITS_HOLDOUT}, {DIGITS_SEED}): it may have seen the held-out reference digits")
    return None


@main.command("eval")
@click.argument("samples_path", metavar="SAMPLES", type=click.Path(exists=True, path_type=Path))
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.9, metavar="P",
              help="A sample is confidently classified when the judge's top probability is at least P.")
@json_option
def evaluate(samples_path, threshold, as_json):
    """Judge digits samples (an .npz of 'sdekit sample', or its directory) without any download.

    A small CNN trained here on the bundled 8x8 digits (held-out accuracy
    printed) gives: the share of confidently classified samples, the class
    histogram's total-variation distance to uniform (0 is uniform, 0.9 is one
    class), and the Frechet distance between its features of the samples and of
    the 359 held-out real digits. The last column scores as many real training
    digits the same way: the yardstick (the Frechet distance is biased upward
    at small n, so compare at equal n).
    """
    from .evaluate import DIGITS_SHAPE, evaluate_digits, fit_digits_judge, real_digits_reference
    from .io import load_samples

    path = samples_path / "samples.npz" if samples_path.is_dir() else samples_path
    samples, prov = load_samples(path)
    if tuple(samples.shape[1:]) != DIGITS_SHAPE:
        raise SdekitError(f"{path} holds samples of shape {tuple(samples.shape)}; sdekit eval judges 8x8 digits, "
                          f"(N, 1, 8, 8) (sample a model trained on data.name = 'digits')")
    leak = _training_leak(prov)
    if leak:
        click.echo(f"warning: {leak}", err=True)
    judge = fit_digits_judge()
    import torch

    scores = evaluate_digits(torch.from_numpy(samples).float(), judge, threshold=threshold)
    reference = real_digits_reference(min(len(samples), 1438), judge)
    if as_json:
        return _dump({"samples": str(path), **scores, "real_digits": reference, "warning": leak})
    rows = [["confidently classified", f"{scores['confident_fraction']:.3f}", f"{reference['confident_fraction']:.3f}"],
            ["class histogram TV", f"{scores['histogram_tv']:.3f}", f"{reference['histogram_tv']:.3f}"],
            ["Frechet distance", f"{scores['frechet']:.2f}", f"{reference['frechet']:.2f}"]]
    hist = " ".join(f"{v:.2f}" for v in scores["class_histogram"])
    click.echo(_table(["METRIC", f"SAMPLES (n={scores['n']})", f"REAL DIGITS (n={reference['n']})"], rows))
    click.echo(f"\nclasses 0-9: {hist}\njudge: a CNN with held-out accuracy {judge.test_accuracy:.3f}, "
               f"confident at p >= {threshold}")


if __name__ == "__main__":  # python -m sdekit.cli
    main()
