"""Method options: declared once, checked when a spec is parsed (type, range, choices) and against the model
(ranges that depend on its blocks) by ``check_methods_for_model``, which ``vitlens compute`` calls before it
processes any image."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from compute.cli import app
from compute.methods import REGISTRY, MethodError, ModelFacts, check_methods_for_model, get_method, parse_methods
from compute.models import probe_architecture

TWELVE_BLOCKS = ModelFacts(depth=12, num_heads=3, has_head=True)


@pytest.mark.parametrize("spec,message", [
    ("rollout(start_layer=-1)", "rollout: start_layer=-1 is not allowed; start_layer takes an integer from 0 to"),
    ("rollout(start_layer=1.5)", "rollout: start_layer=1.5 is not allowed; start_layer takes an integer"),
    ("rollout(start_layer=true)", "start_layer=True is not allowed"),
    ("rollout(head_fusion=median)", "head_fusion='median' is not allowed; head_fusion takes one of mean, max, min"),
    ("chefer_lrp(row_norm=2)", "row_norm=2 is not allowed; row_norm takes true or false"),
    ("attention_flow(residual=1.5)", "residual=1.5 is not allowed; residual takes a number in [0, 1]"),
    ("attention_flow(residual=nan)", "residual=nan is not allowed"),
    ("attention_flow(workers=-1)", "workers=-1 is not allowed; workers takes an integer >= 0 (0 = automatic)"),
    ("saw(layer_weights=exp)", "layer_weights='exp' is not allowed"),
    ("hybrid:saw*rollout(start_layer=-2)", "start_layer=-2 is not allowed"),
])
def test_a_bad_value_is_refused_when_the_spec_is_parsed(spec, message):
    with pytest.raises(MethodError) as exc:
        get_method(spec)
    assert message in str(exc.value)


def test_values_are_kept_as_their_declared_type():
    assert get_method("attention_flow(residual=1)").options["residual"] == 1.0
    assert isinstance(get_method("attention_flow(residual=1)").options["residual"], float)
    assert get_method("rollout(start_layer=0)").key == "rollout"  # the default, spelt out
    assert get_method("chefer_lrp(row_norm=true)").key == "chefer_lrp(row_norm=True)"


def test_defaults_are_declared_once_and_satisfy_their_own_declaration():
    for name, cls in REGISTRY.items():
        assert cls.defaults == {o.name: o.default for o in cls.option_specs}, name
        assert cls().options == cls.defaults, name  # a default outside its own range would raise here


@pytest.mark.parametrize("spec,ok", [
    ("rollout(start_layer=11)", True), ("rollout(start_layer=12)", False), ("rollout(start_layer=99)", False),
    ("chefer_lrp(start_layer=11)", True), ("chefer_lrp(start_layer=12)", False),
    ("hybrid:saw+rollout(start_layer=12)", False), ("hybrid:saw+rollout(start_layer=11)", True),
])
def test_block_indices_are_checked_against_the_model(spec, ok):
    methods = parse_methods(f"raw_attention,{spec}")
    if ok:
        check_methods_for_model(methods, TWELVE_BLOCKS)
        return
    with pytest.raises(MethodError) as exc:
        check_methods_for_model(methods, TWELVE_BLOCKS)
    value = spec.split("start_layer=")[1].rstrip(")")
    assert f"start_layer={value} is not allowed" in str(exc.value)
    assert "from 0 to 11" in str(exc.value) and "12 blocks" in str(exc.value)


def test_the_facts_are_read_from_a_shape_only_model(tiny_vit):
    assert ModelFacts.of(probe_architecture("vit_small_patch14_dinov2")) == ModelFacts(12, 6, False)
    assert ModelFacts.of(tiny_vit) == ModelFacts(3, 3, True)
    with pytest.raises(MethodError, match="from 0 to 2"):
        check_methods_for_model([get_method("rollout(start_layer=3)")], tiny_vit)


def test_the_method_refuses_on_the_capture_too(tiny_vit, images):
    """A caller that never asked check_methods_for_model still gets the refusal, not an empty product."""
    from compute.capture import capture

    method = get_method("rollout(start_layer=3)")
    with pytest.raises(MethodError, match="start_layer=3 is not allowed"):
        method(capture(tiny_vit, images[:1], method.requires))


# ------------------------------------------------------------------------------------------------ command line
cli = CliRunner()


def _compute(voc_mini, out, methods):
    return cli.invoke(app, ["compute", "--voc-root", str(voc_mini), "--out", str(out), "--random-init",
                            "--model", "vit_tiny_patch16_224", "--methods", methods, "--device", "cpu",
                            "--workers", "0", "--limit", "1"])


@pytest.fixture
def runs(monkeypatch):
    """Stands in for the batch job: records each run the command starts (and starts none)."""
    import compute.runner

    started = []

    class Summary:
        def line(self):
            return "stub run"

    monkeypatch.setattr(compute.runner, "run", lambda config, progress=None: started.append(config) or Summary())
    return started


@pytest.mark.parametrize("methods,message", [
    ("rollout(start_layer=99)", "rollout: start_layer=99 is not allowed; start_layer takes an integer from 0 to 11"),
    ("rollout(start_layer=-1)", "rollout: start_layer=-1 is not allowed"),
    ("rollout(start_layer=1.5)", "rollout: start_layer=1.5 is not allowed"),
    ("saw,hybrid:raw_attention*chefer_lrp(start_layer=12)", "chefer_lrp: start_layer=12 is not allowed"),
])
def test_compute_refuses_a_bad_option_before_any_image(voc_mini, tmp_path, runs, methods, message):
    out = tmp_path / "store"
    result = _compute(voc_mini, out, methods)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert runs == [] and not out.exists()  # no run started, no store row written


def test_compute_accepts_the_last_block(voc_mini, tmp_path, runs):
    result = _compute(voc_mini, tmp_path / "store", "rollout(start_layer=11)")
    assert result.exit_code == 0, result.output
    assert [c.methods for c in runs] == ["rollout(start_layer=11)"]
