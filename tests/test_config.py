"""Configs: defaults < file < --set overrides; every error names its source, key path and what is
allowed; the dumped config loads back equal; each component gets only its own section."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from sdekit.config import (ConfigError, OptimConfig, SampleConfig, SDEConfig, TrainConfig, describe_config,
                           dump_config, load_config, make_schema, option, parse_override, save_config)
from sdekit.errors import OptionError, SdekitError
from sdekit.sde import VESDE, VPSDE, SubVPSDE


# toy sections standing in for components whose configs live elsewhere (model, data)
@dataclass(frozen=True)
class ToyBlock:
    kind: Literal["res", "attn"] = "res"
    dropout: float = option(0.0, "dropout rate", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class ToyModel:
    channels: int = option(32, "base channels", ge=1)
    channel_mult: tuple[int, ...] = option((1, 2, 2), "channel multiplier per resolution", ge=1)
    act: str = option("silu", "activation", choices=("silu", "relu", "gelu"))
    name: str = option("unet", "architecture")
    width: int | None = option(None, "hidden width (unset: channels * 4)", ge=1)
    block: ToyBlock = dataclasses.field(default_factory=ToyBlock)
    extra: dict[str, Any] = option({}, "free table")


@dataclass(frozen=True)
class ToyData:
    name: str = option("ring8", "dataset")
    scale: float = option(1.0, "scale", gt=0.0)
    flip: bool = option(False, "random flips")


Schema = make_schema("Schema", sde=SDEConfig, model=ToyModel, optim=OptimConfig, train=TrainConfig,
                     sample=SampleConfig, data=ToyData)


@pytest.fixture
def toml(tmp_path):
    def write(text, name="run.toml"):
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


def error(*args, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kw)
    assert isinstance(info.value, SdekitError)
    return str(info.value)


# -- defaults, sections, precedence ----------------------------------------------------

def test_defaults_without_a_file():
    c = load_config(None, Schema)
    assert c == Schema()
    assert c.sde == SDEConfig() and c.model == ToyModel() and c.sample.options == {}
    assert c.model.width is None and c.model.block == ToyBlock()


def test_each_section_gets_only_its_own_table(toml):
    c = load_config(toml("[model]\nchannels = 64\n[data]\nscale = 2\n"), Schema)
    assert type(c.model) is ToyModel and type(c.data) is ToyData and type(c.sde) is SDEConfig
    assert c.model.channels == 64 and c.data.scale == 2.0 and isinstance(c.data.scale, float)
    # a section is its own small object: nothing of the others in it
    assert {f.name for f in dataclasses.fields(c.model)} == {f.name for f in dataclasses.fields(ToyModel)}
    assert isinstance(c.sde.build(), VPSDE)


def test_file_then_overrides_later_wins(toml):
    path = toml('[model]\nchannels = 64\nchannel_mult = [1, 2]\n[optim]\nlr = 1e-3\n'
                '[sample.options]\nsnr = 0.2\n')
    c = load_config(path, Schema, ["model.channels=128", "optim.lr=3e-4", "model.channels=96",
                                   "model.channel_mult=[1, 2, 2, 4]", "sample.options.n_steps=2",
                                   "model.block.kind=attn", "model.width=256"])
    assert c.model.channels == 96 and c.model.channel_mult == (1, 2, 2, 4) and c.optim.lr == 3e-4
    assert c.sample.options == {"snr": 0.2, "n_steps": 2}  # merged into the file's table
    assert c.model.block == ToyBlock(kind="attn") and c.model.width == 256
    assert c.optim.warmup == OptimConfig().warmup  # untouched keys keep their defaults


def test_override_values_are_toml_and_bare_words_are_strings():
    c = load_config(None, Schema, ["sample.sampler=ode", "data.name=123", "data.flip=true",
                                   'sample.options."corrector.snr"=0.1', "sample.options.tag=abc",
                                   'model.extra={a = 1, b = [true, "x"]}', "sample.schedule=karras:rho=5",
                                   'model.name="quoted"'])
    assert c.sample.sampler == "ode" and c.data.name == "123" and c.data.flip is True
    assert c.sample.options == {"corrector.snr": 0.1, "tag": "abc"}
    assert c.model.extra == {"a": 1, "b": [True, "x"]} and c.sample.schedule == "karras:rho=5"
    assert c.model.name == "quoted"
    assert parse_override(" optim.betas = [0.5, 0.9] ") == (("optim", "betas"), [0.5, 0.9], "[0.5, 0.9]")


def test_sde_section_builds_each_sde():
    assert SDEConfig(name="ve", sigma_max=10.0).build() == VESDE(sigma_min=0.01, sigma_max=10.0)
    assert SDEConfig(name="subvp", beta_max=10.0).build() == SubVPSDE(beta_min=0.1, beta_max=10.0)
    assert SDEConfig(name="ve").parameters() == ("sigma_min", "sigma_max")


def test_optim_and_sample_helpers():
    import torch

    o = OptimConfig(warmup=10, lr=1.0)
    assert o.lr_at(0) == pytest.approx(0.1) and o.lr_at(9) == 1.0 and o.lr_at(100) == 1.0
    opt = OptimConfig(name="adamw", weight_decay=0.1).build([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 0.1
    kw = SampleConfig(steps=0, batch_size=0, options={"snr": 0.1}).sample_kwargs()
    assert kw["steps"] is None and kw["batch_size"] is None and kw["options"] == {"snr": 0.1}


def test_sample_section_checks_sampler_and_options(registry):
    load_config(None, Schema, ["sample.options.snr=0.1"]).sample.check(registry)
    with pytest.raises(ConfigError, match=r"sample.sampler must be one of .*got 'pcc'; did you mean 'pc'"):
        SampleConfig(sampler="pcc").check(registry)
    with pytest.raises(ConfigError, match=r"sample.options do not fit sampler 'pc': .*'snrr'; did you mean 'snr'"):
        SampleConfig(options={"snrr": 0.1}).check(registry)


# -- errors -----------------------------------------------------------------------------

def test_unknown_section_with_did_you_mean(toml):
    path = toml("[modle]\nchannels = 3\n")
    msg = error(path, Schema)
    assert msg.startswith(f"{path}: modle is not a section; did you mean [model]?")
    assert "(sections: sde, model, optim, train, sample, data)" in msg


def test_unknown_key_with_did_you_mean(toml):
    path = toml("[optim]\nlrr = 0.1\n")
    assert error(path, Schema) == (f"{path}: optim.lrr is not a key of [optim]; did you mean optim.lr? (valid "
                                   f"keys: name, lr, weight_decay, betas, eps, warmup, grad_clip, ema_decay, ema_warmup)")
    assert "did you mean" not in error(None, Schema, ["optim.zzz=1"])
    assert error(None, Schema, ["model.block.dropuot=0.1"]).startswith(
        "--set model.block.dropuot=0.1: model.block.dropuot is not a key of [model.block]; "
        "did you mean model.block.dropout?")


def test_wrong_types_name_key_and_expected_type(toml):
    path = toml('[optim]\nlr = "1e-3"\n')
    assert error(path, Schema) == f"{path}: optim.lr must be a float, got the string '1e-3'"
    assert error(toml("[train]\nsteps = 1.5\n"), Schema).endswith("train.steps must be an integer, got the float 1.5")
    assert error(toml("[train]\ncompile = 1\n"), Schema).endswith(
        "train.compile must be a boolean (true or false), got the integer 1")
    assert error(toml("[model]\nchannels = true\n"), Schema).endswith(
        "model.channels must be an integer, got the boolean true")
    assert error(toml('[model]\nchannel_mult = [1, "2"]\n'), Schema).endswith(
        "model.channel_mult[1] must be an integer, got the string '2'")
    assert error(toml("[model]\nchannel_mult = 2\n"), Schema).endswith(
        "model.channel_mult must be an array of integers, got the integer 2")
    assert error(toml("[optim]\nbetas = [0.9, 0.99, 0.999]\n"), Schema).endswith(
        "optim.betas must be an array of 2 floats, got 3 items")
    assert error(toml("model = 3\n"), Schema).endswith("model must be a table ([model] in TOML), got the integer 3")
    assert error(toml("[model.block]\nkind = \"conv\"\n"), Schema).endswith(
        "model.block.kind must be one of 'res', 'attn', got the string 'conv'")
    assert error(None, Schema, ["sample.options=3"]).endswith("sample.options must be a table, got the integer 3")


def test_out_of_bounds_and_bad_choices():
    assert error(None, Schema, ["optim.lr=-1"]) == "--set optim.lr=-1: optim.lr must be > 0.0, got -1.0"
    assert error(None, Schema, ["model.channel_mult=[1, 0, 2]"]).endswith(
        "model.channel_mult[1] must be >= 1, got 0")
    assert error(None, Schema, ["optim.betas=[0.9, 1]"]).endswith(
        "optim.betas[1] must be >= 0.0 and < 1.0, got 1.0")
    assert error(None, Schema, ["train.device=gpu"]) == (
        "--set train.device=gpu: train.device must be one of auto, cpu, cuda, got 'gpu'; did you mean 'cpu'?")
    assert error(None, Schema, ["sde.name=vpp"]).endswith("sde.name must be one of vp, subvp, ve, got 'vpp'; "
                                                          "did you mean 'vp'?")
    assert "model.width must be >= 1, got 0" in error(None, Schema, ["model.width=0"])


def test_section_checks_across_keys_name_the_key(toml):
    path = toml('[sde]\nname = "vp"\nsigma_max = 100.0\n')
    assert error(path, Schema) == (f"{path}: sde.sigma_max = 100.0 does not apply to the 'vp' SDE, which takes "
                                   f"beta_min, beta_max; leave it out, or choose an SDE that takes it (ve)")
    msg = error(path, Schema, ["sde.beta_max=0.05"])
    assert msg.startswith(f"{path} and --set sde.beta_max=0.05: sde.")
    assert error(None, Schema, ["sde.name=ve", "sde.sigma_min=60"]).endswith(
        "sde.sigma_max = 50.0 must be > sigma_min = 60.0")
    assert "sample.schedule is invalid: unknown schedule 'unifrom'; did you mean 'uniform'?" in error(
        None, Schema, ["sample.schedule=unifrom"])
    # the defaults of another SDE's parameters are fine (a saved config writes every key)
    assert load_config(None, Schema, ["sde.name=ve"]).sde.build() == VESDE()
    with pytest.raises(ConfigError, match="^sigma_min = 0.5 does not apply to the 'subvp' SDE"):
        SDEConfig(name="subvp", sigma_min=0.5)


@pytest.mark.parametrize("text, expected", [
    ("optim.lr", "--set optim.lr: is not of the form section.key=value (e.g. --set model.channels=64)"),
    ("=3", "--set =3: is not of the form section.key=value"),
    ("optim..lr=3", "--set optim..lr=3: 'optim..lr' is not a key path like model.channels"),
    ("optim.lr x=3", "--set optim.lr x=3: 'optim.lr x' is not a key path"),
    ("model.channel_mult=[1, 2", "--set model.channel_mult=[1, 2: the value '[1, 2' is not valid TOML ("),
    ('data.name="abc', "--set data.name=\"abc: the value '\"abc' is not valid TOML"),
])
def test_bad_override_syntax(text, expected):
    assert error(None, Schema, [text]).startswith(expected)


def test_bad_toml_names_file_and_line(toml):
    path = toml("[model]\nchannels = 64\nact = silu\n")  # strings need quotes in a file
    assert error(path, Schema) == f"{path}: invalid TOML: Invalid value (at line 3, column 7)"
    assert error(toml("[model]\nchannels = = 3\n"), Schema).count("line 2") == 1
    missing = path.parent / "nope.toml"
    assert error(missing, Schema) == f"config file {missing} does not exist"
    bad = path.parent / "latin1.toml"
    bad.write_bytes(b'[data]\nname = "caf\xe9"\n')
    assert "is not UTF-8 text" in error(bad, Schema)


def test_required_keys_without_default():
    @dataclass(frozen=True)
    class NeedsPath:
        root: str

    schema = make_schema("WithRequired", data=NeedsPath)
    with pytest.raises(ConfigError, match=r"^data.root is required \(it has no default\)$"):
        load_config(None, schema)
    assert load_config(None, schema, ["data.root=/tmp/x"]).data.root == "/tmp/x"


def test_only_optional_unions_are_supported():
    @dataclass(frozen=True)
    class Odd:
        value: int | str = 3

    with pytest.raises(TypeError, match="may be `T | None`"):
        load_config(None, make_schema("OddSchema", odd=Odd), ["odd.value=1"])


# -- writing: dump, save, round trip, describe ------------------------------------------------

def test_dump_writes_every_key_with_help_and_loads_back_equal(tmp_path):
    c = load_config(None, Schema, ["model.channel_mult=[1, 2, 2, 2]", "sde.name=ve", "sde.sigma_max=12.5",
                                   "optim.lr=1e-4", 'sample.options={snr = 0.16, "corrector.n_steps" = 2}',
                                   'data.name="tab\\there \\"quoted\\" \\\\ \\u00e9\\u007f"',
                                   'model.extra={nested = {deep = [1, 2]}, list = [{a = 1}]}'])
    text = dump_config(c)
    for line in ("[sde]", 'name = "ve"', "sigma_max = 12.5", "beta_min = 0.1", "[model.block]",
                 'kind = "res"', "channel_mult = [1, 2, 2, 2]", "[sample.options]", '"corrector.n_steps" = 2',
                 "# learning rate after warmup [> 0.0]", "# width is unset: hidden width (unset: channels * 4)",
                 "compile = false", "warmup = 1000"):
        assert line in text.splitlines(), line
    saved = save_config(c, tmp_path / "config.toml")
    assert saved.read_text() == text and not list(tmp_path.glob(".*.tmp"))
    assert load_config(saved, Schema) == c
    assert load_config(saved, Schema).data.name == 'tab\there "quoted" \\ \u00e9\x7f'


def test_round_trip_of_defaults_and_odd_floats(tmp_path):
    c = Schema()
    assert load_config(save_config(c, tmp_path / "a.toml"), Schema) == c
    odd = dataclasses.replace(c, optim=OptimConfig(lr=1e-300, eps=5e-324), data=ToyData(scale=math.inf))
    assert load_config(save_config(odd, tmp_path / "b.toml"), Schema) == odd


def test_describe_config_lists_every_key():
    rows = {r["key"]: r for r in describe_config(Schema)}
    assert rows["optim.lr"] == {"key": "optim.lr", "type": "float", "default": 2e-4, "required": False,
                                "help": "learning rate after warmup", "bounds": "> 0.0", "choices": None}
    assert rows["model.block.kind"]["choices"] == ["res", "attn"]
    assert rows["model.width"]["type"] == "int | None" and rows["model.channel_mult"]["type"] == "array of int"
    assert rows["sample.options"]["default"] == {} and rows["train.device"]["choices"] == ["auto", "cpu", "cuda"]
    assert all(r["help"] for k, r in rows.items() if not k.startswith("model.block"))


def test_option_is_shared_with_sampler_options():
    from sdekit.samplers import base

    assert base.option is option
    with pytest.raises(OptionError, match="^x must be >= 1, got 0$"):
        base._check_bounds(0, {"ge": 1}, "x")
    a, b = ToyModel(), ToyModel()
    assert a.extra == {} and a.extra is not b.extra  # mutable defaults are copied
