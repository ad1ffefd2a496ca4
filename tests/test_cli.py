"""The eapbench command: compare end to end (pipeline and loader faked), pairs listing, zoo forwarding."""

from __future__ import annotations

import json
import sys
import types

import pytest

from pathlib import Path

from eapbench import cli
from eapbench.suite import options

sys.path.insert(0, str(Path(__file__).resolve().parent / "suite"))  # test_runner lives with the suite's tests
from test_runner import fake  # noqa: E402, F401  (fixture: pipeline and loader faked)


def test_compare_writes_report_and_exit_code(fake, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(options, "_offline", lambda: False)
    monkeypatch.setattr(options, "hub_probe", lambda *a, **k: None)  # the fake hub ids "exist"
    out = tmp_path / "report"
    rc = cli.main(["compare", "--base", "tiny/base", "--tuned", "tiny/rl", "--dataset", "synthetic", "--alpha", "0.3",
                   "--method", "grpo", "--template", "mini", "--n-resamples", "200", "--report", str(out),
                   "--no-figures"])
    text = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    statuses = [v["status"] for v in data["results"][0]["verdicts"].values()]
    assert rc == (1 if "fail" in statuses else 0)
    assert set(data["results"][0]["verdicts"]) == {"C1", "C2", "C3", "C4", "C5"}
    assert "user-pair" in text and "C1 increase" in text and "report:" in text
    assert (out / "table1.md").is_file()
    assert fake.prepare_calls == [("tiny/base", "tiny/rl", "synthetic", (0.3,))]


def test_compare_missing_local_model_is_a_clear_error(tmp_path, capsys):
    rc = cli.main(["compare", "--base", str(tmp_path / "nope"), "--tuned", "org/x", "--dataset", "gsm8k",
                   "--alpha", "0.3"])
    assert rc == 2 and "no such folder" in capsys.readouterr().err


def test_compare_bad_method(capsys):
    rc = cli.main(["compare", "--base", "a/b", "--tuned", "a/c", "--dataset", "gsm8k", "--alpha", "0.3",
                   "--method", "magic"])
    assert rc == 2 and "unknown method 'magic'" in capsys.readouterr().err


def test_pairs_listing(capsys):
    assert cli.main(["pairs", "paper"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-math-grpo" in out and "cannot run here" in out


def test_zoo_forwarding(monkeypatch):
    seen = []
    fake = types.ModuleType("eapbench.zoo.build")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "eapbench.zoo.build", fake)
    import eapbench.zoo as zoo

    monkeypatch.setattr(zoo, "build", fake, raising=False)
    assert cli.main(["zoo", "train", "--tiny", "--jobs", "1"]) == 0
    assert seen == [["--tiny", "--jobs", "1"]]
    assert cli.main(["zoo", "bake"]) == 2
    fake_eval = types.ModuleType("eapbench.zoo.evaluate")
    fake_eval.main = lambda argv: seen.append(("eval", argv)) or 0
    monkeypatch.setitem(sys.modules, "eapbench.zoo.evaluate", fake_eval)
    monkeypatch.setattr(zoo, "evaluate", fake_eval, raising=False)
    assert cli.main(["zoo", "eval", "--json"]) == 0
    assert seen[-1] == ("eval", ["--json"])


# --------------------------------------------------------------------------- bad input: one line, exit 2, no model

def _compare_args(*extra: str) -> list[str]:
    return ["compare", "--dataset", "synthetic", "--alpha", "0.3", "--n-resamples", "200", *extra]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("eapbench compare: "), err
    return err


@pytest.mark.parametrize("extra,message", [
    (["--batch-size", "0"], "eapbench compare: --batch-size 0: must be >= 1; the attribution batch size, e.g. 8"),
    (["--threads", "-1"], "eapbench compare: --threads -1: must be >= 0; use a thread count >= 1, or 0 for "
                          "torch's default"),
    (["--n-resamples", "0"], "eapbench compare: --n-resamples 0: must be >= 100; a 95% interval needs at least "
                             "100 bootstrap resamples (default 9999)"),
    (["--max-new-tokens", "0"], "eapbench compare: --max-new-tokens 0: must be >= 1"),
    (["--n-samples", "0"], "eapbench compare: --n-samples 0: must be >= 1"),
    (["--limit", "-3"], "eapbench compare: --limit -3: must be >= 1"),
    (["--alpha", "1.5"], "eapbench compare: --alpha 1.5: an answer fraction alpha must be in (0, 1]"),
    (["--alpha", "0"], "eapbench compare: --alpha 0.0: an answer fraction alpha must be in (0, 1]"),
    (["--device", "tpu"], "eapbench compare: --device 'tpu': unknown device; use cpu, cuda, cuda:N or mps"),
    (["--dtype", "float8"], "eapbench compare: --dtype float8: unknown dtype"),
    (["--dataset", "gsm9k"], "eapbench compare: --dataset gsm9k: unknown dataset"),
    (["--method", "magic"], "eapbench compare: --method magic: unknown method 'magic'"),
    (["--name", "my pair"], "eapbench compare: --name my pair: pair id 'my pair': use letters"),
])
def test_bad_numbers_and_names_fail_before_any_model(fake, capsys, extra, message):
    rc = cli.main(_compare_args("--base", "zoo:sft", "--tuned", "zoo:grpo", *extra))
    assert rc == 2 and _err_line(capsys).startswith(message)
    assert fake.prepare_calls == [] and fake.load_calls == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_one_line(fake, capsys):
    assert cli.main(_compare_args("--base", "zoo:sft", "--tuned", "zoo:grpo", "--device", "cuda")) == 2
    assert "--device cuda: CUDA is not available here" in _err_line(capsys)
    assert fake.prepare_calls == []


def test_report_naming_a_file_is_checked_first(fake, tmp_path, capsys):
    f = tmp_path / "report"
    f.write_text("not a folder")
    assert cli.main(_compare_args("--base", "zoo:sft", "--tuned", "zoo:grpo", "--report", str(f))) == 2
    assert f"--report {f}: this is an existing file" in _err_line(capsys)
    assert fake.prepare_calls == []


def test_relative_path_typo_is_not_taken_for_a_hub_id(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    monkeypatch.setattr(options, "hub_probe", lambda *a, **k: pytest.fail("no hub for a local typo"))
    assert cli.main(_compare_args("--base", "models/sft-typo", "--tuned", "zoo:grpo")) == 2
    assert "--base models/sft-typo: no such local folder (models/ exists here" in _err_line(capsys)
    # no such parent folder either: the hub is tried once, quickly, and its answer is part of the one line
    monkeypatch.setattr(options, "_offline", lambda: False)
    monkeypatch.setattr(options, "hub_probe", lambda *a, **k: "the hub (huggingface.co) was not reachable: boom")
    assert cli.main(_compare_args("--base", "zoo:sft", "--tuned", "sft/typo")) == 2
    assert ("--tuned sft/typo: no local folder of that name exists, and the hub (huggingface.co) was not "
            "reachable: boom") in _err_line(capsys)
    assert fake.prepare_calls == []


def _zoo_copy(tmp_path, name):
    import shutil

    from eapbench.zoo import checkpoint_path

    return Path(shutil.copytree(checkpoint_path(name), tmp_path / name))


def test_truncated_safetensors_names_file_and_side(fake, tmp_path, capsys):
    tuned = _zoo_copy(tmp_path, "grpo")
    w = tuned / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4096])
    assert cli.main(_compare_args("--base", "zoo:sft", "--tuned", str(tuned))) == 2
    err = _err_line(capsys)
    assert f"--tuned {tuned}: the tuned model's weights are broken: {w} is truncated" in err
    assert "re-download or rebuild the model" in err and fake.prepare_calls == []


def test_truncated_safetensors_load_is_wrapped(tmp_path):
    from eapbench.models import ModelLoadError, load_model

    folder = _zoo_copy(tmp_path, "sft")
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4096])
    with pytest.raises(ModelLoadError, match=rf"cannot load model '{folder}'.*truncated or corrupt.*re-download"):
        load_model(folder)


def test_load_error_during_the_run_names_the_side(fake, monkeypatch, capsys):
    from eapbench.models import ModelLoadError

    monkeypatch.setattr(options, "_offline", lambda: False)
    monkeypatch.setattr(options, "hub_probe", lambda *a, **k: None)

    def broken(path, **kw):
        raise ModelLoadError(f"cannot load model {path!r}: OSError: gone")

    monkeypatch.setattr("eapbench.models.load_model", broken)
    assert cli.main(_compare_args("--base", "tiny/base", "--tuned", "tiny/rl", "--template", "mini")) == 2
    assert _err_line(capsys) == "eapbench compare: --base tiny/base: cannot load model 'tiny/base': OSError: gone"


def _parse(*argv: str):
    import argparse

    ap = argparse.ArgumentParser()
    cli._compare_parser(ap.add_subparsers(dest="command"))
    return ap.parse_args(_compare_args(*argv))


def test_zoo_folder_by_path_gets_the_mini_template(tmp_path):
    base, tuned = _zoo_copy(tmp_path, "sft"), _zoo_copy(tmp_path, "grpo")
    pair, template = cli.check_compare(_parse("--base", str(base), "--tuned", str(tuned)))
    assert template == "mini" and pair.base.template == "mini" and pair.base.max_new_tokens == 64


def test_folder_without_chat_template_says_template(fake, tmp_path, capsys):
    base = _zoo_copy(tmp_path, "sft")
    (base / "model_card.json").unlink()  # no longer recognisable as a zoo model: default template 'chat'
    assert cli.main(_compare_args("--base", str(base), "--tuned", "zoo:grpo")) == 2
    err = _err_line(capsys)
    assert f"--base {base}: its tokenizer has no chat template" in err and "pass --template" in err
    assert "format_prompt" not in err and fake.prepare_calls == []


def test_gguf_file_is_accepted_as_base_or_tuned(tmp_path, capsys):
    g = tmp_path / "model.Q4_1.gguf"
    g.write_bytes(b"GGUF")  # routing only: nothing is loaded here
    pair, _ = cli.check_compare(_parse("--base", str(g), "--tuned", str(g), "--template", "mini"))
    assert (pair.base.path, pair.base.gguf_file) == (str(tmp_path), g.name) and pair.tuned.gguf_file == g.name
    assert cli.main(_compare_args("--base", str(g), "--tuned", str(tmp_path / "missing.gguf"))) == 2
    assert f"--tuned {tmp_path / 'missing.gguf'}: no such GGUF file" in _err_line(capsys)


def test_tokenizer_mismatch_names_the_cli_flag_and_the_pair_key():
    from eapbench.pipeline.paired import TokenizerMismatchError, check_same_tokenizer

    a = types.SimpleNamespace(get_vocab=lambda: {"a": 0}, eos_token="a", eos_token_id=0)
    b = types.SimpleNamespace(get_vocab=lambda: {"b": 0}, eos_token="b", eos_token_id=0)
    with pytest.raises(TokenizerMismatchError) as info:
        check_same_tokenizer(a, b)
    assert "--allow-tokenizer-mismatch" in str(info.value) and "allow_tokenizer_mismatch: true" in str(info.value)


def test_compare_on_disk_offloaded_models_equals_the_plain_run(tmp_path, monkeypatch):
    """Issue 11 end to end: `--device-map auto --max-memory cpu=1MiB` offloads every layer of both zoo models
    to disk, for generation and attribution; the counts and every metric equal the plain run's."""
    import json

    runs = {}
    for name, extra in (("plain", []), ("offloaded", ["--device-map", "auto", "--max-memory", "cpu=1MiB"])):
        monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / f"cache-{name}"))  # nothing shared between the two
        args = ["compare", "--base", "zoo:sft", "--tuned", "zoo:grpo", "--dataset", "synthetic", "--alpha", "0.3",
                "--limit", "40", "--n-samples", "15", "--n-resamples", "200", "--report", str(tmp_path / name)]
        assert cli.main(args + extra) in (0, 1)
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())["results"][0]
    plain, off = runs["plain"], runs["offloaded"]
    assert off["provenance"]["placement"] == {"device_map": "auto", "max_memory": "cpu=1MiB", "share_scores": False}
    assert off["counts"] == plain["counts"] and off["metrics"] == plain["metrics"]


def test_backend_vllm_on_cpu_is_one_line_before_any_model(fake, capsys):
    assert cli.main(_compare_args("--base", "zoo:sft", "--tuned", "zoo:grpo", "--backend", "vllm")) == 2
    assert "--backend vllm: vLLM runs on CUDA GPUs only and this run's device is cpu; use --backend hf" in \
        _err_line(capsys)
    assert cli.main(_compare_args("--base", "zoo:sft", "--tuned", "zoo:grpo", "--gen-token-budget", "0")) == 2
    assert "--gen-token-budget 0: must be >= 1" in _err_line(capsys)
    assert fake.prepare_calls == [] and fake.load_calls == []


def test_backend_and_token_budget_reach_the_pipeline(fake, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    seen = []
    real = fake.prepare_pair
    monkeypatch.setattr("eapbench.pipeline.paired.prepare_pair", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    rc = cli.main(_compare_args("--base", "zoo:sft", "--tuned", "zoo:grpo", "--backend", "auto", "--gen-token-budget",
                                "4096", "--report", str(tmp_path / "r"), "--no-figures"))
    assert rc in (0, 1), capsys.readouterr().err
    assert seen[0]["backend"] == "hf" and seen[0]["gen_token_budget"] == 4096  # auto on a CPU: hf


def test_compare_method_is_the_post_training_method(capsys):
    """compare's --method names the pair's post-training method; the attribution method is --attribution."""
    rc = cli.main(["compare", "--base", "a/b", "--tuned", "a/c", "--dataset", "gsm8k", "--alpha", "0.3",
                   "--method", "eap-ig"])
    assert rc == 2 and "choose the attribution method with --attribution eap-ig" in capsys.readouterr().err
    rc = cli.main(["compare", "--base", "a/b", "--tuned", "a/c", "--dataset", "gsm8k", "--alpha", "0.3",
                   "--attribution", "eap-ig", "--ig-steps", "0"])
    assert rc == 2 and "--ig-steps" in capsys.readouterr().err


def test_compare_head_eap_ig_and_robustness(fake, monkeypatch, tmp_path, capsys):
    """Issue 13.5: compare takes --granularity head and --attribution eap-ig, and --robustness writes the
    side-by-side table (the fake pipeline's tiny models)."""
    monkeypatch.setenv("EAPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(options, "_offline", lambda: False)
    monkeypatch.setattr(options, "hub_probe", lambda *a, **k: None)
    common = ["compare", "--base", "tiny/base", "--tuned", "tiny/rl", "--dataset", "synthetic", "--alpha", "0.3",
              "--method", "grpo", "--template", "mini", "--n-resamples", "200", "--no-figures"]
    cli.main([*common, "--granularity", "head", "--attribution", "eap-ig", "--ig-steps", "2",
              "--report", str(tmp_path / "r1")])
    r = json.loads((tmp_path / "r1" / "results.json").read_text())["results"][0]
    assert r["config"]["granularity"] == "head" and r["config"]["attribution"] == "eap-ig" and r["config"]["ig_steps"] == 2
    assert r["extra"]["faithfulness"]["base"]["cpr"] is not None
    cli.main([*common, "--robustness", "--report", str(tmp_path / "r2")])
    table = (tmp_path / "r2" / "robustness.md").read_text()
    assert "| qkv/EAP | head/EAP | qkv/EAP-IG |" in table and "user-pair / synthetic / α 0.3 | C1 |" in table
    capsys.readouterr()
