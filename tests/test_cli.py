"""The command line: every option documented, the summary printed, the gate's exit codes."""

import json
import shutil
import subprocess
import sys

import pytest

from hubert_export import cli

from .test_build import _perturbed_copy


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["build", "check", "transcribe", "bench"])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    parser = cli.COMMANDS[command][0]()
    for action in parser._actions:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help text"
        for option in action.option_strings:
            assert option in text


def test_build_prints_a_summary_and_check_gates(ctc_checkpoint, tmp_path, capsys):
    out = tmp_path / "artifact"
    code, stdout, stderr = _run(capsys, "--target", "onnx", "--model", ctc_checkpoint, "--output", out)
    assert code == 0
    assert f"artifact   {out}" in stdout and "parity     PASS" in stdout and "latency" in stdout
    assert "exporting ctc to ONNX" in stderr and "parity case" in stderr  # progress on stderr

    junit = tmp_path / "gate.xml"
    code, stdout, _ = _run(capsys, "check", out, "--junit", junit, "--quiet")
    assert code == 0 and stdout.startswith("parity PASS") and junit.is_file()

    drifted = _perturbed_copy(out, tmp_path / "drifted")
    code, stdout, _ = _run(capsys, "check", drifted, "--quiet")
    assert code == 1 and stdout.startswith("parity FAIL") and "max_abs_error" in stdout


def test_latency_repeats_zero_skips_the_measurement_and_a_negative_count_is_refused(onnx_artifact, tmp_path,
                                                                                     capsys):
    copy = tmp_path / "artifact"
    shutil.copytree(onnx_artifact, copy)
    reports = tmp_path / "reports"
    code, _, stderr = _run(capsys, "check", copy, "--latency-repeats", "0", "--report-dir", reports)
    assert code == 0 and "latency:" not in stderr and "parity case" in stderr
    assert json.loads((reports / "parity.json").read_text())["latency"] is None
    code, stdout, stderr = _run(capsys, "check", copy, "--latency-repeats", "2", "--report-dir", reports)
    assert code == 0 and "latency: 2 runs" in stderr and "latency " in stdout
    assert json.loads((reports / "parity.json").read_text())["latency"]["seconds"] > 0
    with pytest.raises(SystemExit) as info:
        cli.main(["check", str(copy), "--latency-repeats", "-1"])
    assert info.value.code == 2 and "0 skips the measurement" in capsys.readouterr().err


def test_check_with_moved_checkpoint_needs_reference(ctc_checkpoint, tmp_path, capsys):
    moved = tmp_path / "moved-checkpoint"
    shutil.copytree(ctc_checkpoint, moved)
    out = tmp_path / "artifact"
    assert _run(capsys, "--target", "onnx", "--model", moved, "--output", out, "--quiet")[0] == 0
    shutil.move(moved, tmp_path / "elsewhere")
    code, _, stderr = _run(capsys, "check", out, "--quiet")
    assert code == 2 and "pass --reference" in stderr and stderr.count("\n") == 1
    assert _run(capsys, "check", out, "--reference", tmp_path / "elsewhere", "--quiet")[0] == 0


def test_tight_recipe_threshold_exits_1(ctc_checkpoint, tmp_path, capsys):
    recipe = tmp_path / "strict.yaml"
    recipe.write_text("target: onnx\nthresholds:\n  max_abs_error: 1.0e-12\n")
    code, stdout, _ = _run(capsys, "--recipe", recipe, "--model", ctc_checkpoint, "--output", tmp_path / "a",
                           "--quiet")
    assert code == 1 and "parity     FAIL" in stdout
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["recipe"]["thresholds"]["max_abs_error"] == 1e-12 and manifest["parity"]["passed"] is False


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "hubert_export.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--target" in result.stdout
    assert shutil.which("hubert-export") is not None


def test_attention_mask_flag_sets_the_exported_inputs(tmp_path, capsys):
    """The shipped model's feature extractor returns a mask, so `auto` exports one; `false` gives the
    input_values-only graph that Optimum's ORTModelForCTC can feed (benchmarks/optimum_interop.py)."""
    import onnx

    inputs = {}
    for choice in ("auto", "false"):
        out = tmp_path / choice
        code, _, _ = _run(capsys, "--target", "onnx", "--attention-mask", choice, "--output", out,
                          "--latency-repeats", "0", "--quiet")
        assert code == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["recipe"]["export"]["attention_mask"] == {"auto": "auto", "false": False}[choice]
        graph = onnx.load(str(out / "model.onnx")).graph
        inputs[choice] = [i.name for i in graph.input]
        assert [i["name"] for i in manifest["io"]["inputs"]] == inputs[choice]
        assert [o.name for o in graph.output] == ["logits"]
    assert inputs == {"auto": ["input_values", "attention_mask"], "false": ["input_values"]}


def test_wav2vec2_ctc_checkpoint_builds_checks_and_transcribes(wav2vec2_ctc_checkpoint, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    from hubert_export.parity import _speech_like

    out = tmp_path / "artifact"
    code, stdout, _ = _run(capsys, "--target", "onnx", "--model", wav2vec2_ctc_checkpoint, "--output", out,
                           "--latency-repeats", "0")
    assert code == 0 and "parity     PASS" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "ctc" and manifest["source"]["architecture"] == "Wav2Vec2ForCTC"
    assert json.loads((out / "config.json").read_text())["model_type"] == "wav2vec2"
    code, stdout, _ = _run(capsys, "check", out, "--quiet", "--latency-repeats", "0")
    assert code == 0 and stdout.startswith("parity PASS")

    clip = tmp_path / "clip.wav"
    sf.write(clip, 0.1 * _speech_like(np.random.default_rng(0), 40_000), 16_000)
    texts = []
    for source in (out, wav2vec2_ctc_checkpoint):  # the artifact through ONNX Runtime, the checkpoint eager
        code, stdout, _ = _run(capsys, "transcribe", source, clip, "--quiet")
        assert code == 0
        texts.append(stdout)
    assert texts[0] == texts[1] and texts[0].strip()


@pytest.mark.parametrize("model_type", ["data2vec-audio", "wavlm"])
def test_unsupported_model_types_are_refused_in_one_line(model_type, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config_class = {"data2vec-audio": transformers.Data2VecAudioConfig, "wavlm": transformers.WavLMConfig}[model_type]
    config_class(hidden_size=32, num_attention_heads=4, num_conv_pos_embedding_groups=4).save_pretrained(tmp_path / "ck")
    code, stdout, stderr = _run(capsys, "--target", "onnx", "--model", tmp_path / "ck", "--output", tmp_path / "out",
                                "--quiet")
    assert code == 2 and stdout == "" and not (tmp_path / "out").exists()
    assert stderr.startswith(f"hubert-export: error: model_type '{model_type}' is not supported (")
    assert "exports hubert and wav2vec2 checkpoints" in stderr and stderr.count("\n") == 1
