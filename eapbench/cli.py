"""The ``eapbench`` command: thin front doors to the modules that do the work.

- ``eapbench compare --base X --tuned Y --dataset gsm8k --alpha 0.3 [--method grpo]``: the suite's
  measurement, verdicts and report for a new pair, without writing tests;
- ``eapbench pairs [GROUP]``: the registered pairs and whether they can run here;
- ``eapbench zoo train ...``: rebuild the mini zoo (forwards to :mod:`eapbench.zoo.build`);
  ``eapbench zoo eval``: each child vs sft on held-out problems (:mod:`eapbench.zoo.evaluate`);
- ``eapbench report merge DIR... --out DIR``: one report from the report folders of shards, matrix
  jobs or machines (:mod:`eapbench.suite.merge`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("eapbench.cli")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="measure and judge the claims for one base/tuned pair",
                       description="Generate, select, attribute and judge claims C1-C6 for a base and a tuned "
                                   "model, then write results.json, table1.md and figures.")
    p.add_argument("--base", required=True, help="base model: hub id, local folder, .gguf file, zoo:<name>, smollm2, "
                                                 "or a PEFT adapter folder (BASE+ADAPTER names its base)")
    p.add_argument("--tuned", required=True, help="post-trained model: hub id, local folder, .gguf file, zoo:<name>, "
                                                  "smollm2, or a PEFT adapter folder (BASE+ADAPTER names its base)")
    p.add_argument("--dataset", action="append", required=True,
                   help="dataset (gsm8k, math, math500, college_math, synthetic); repeatable")
    p.add_argument("--alpha", type=float, action="append", required=True, help="answer fraction alpha; repeatable")
    p.add_argument("--method", default="grpo", help="post-training method: grpo, ppo, rlvr, dpo, dpo+rlvr, sft "
                                                    "(decides the expected directions; default grpo)")
    p.add_argument("--template", default=None,
                   help="prompt template: a registered name (eapbench.prompts) or a format string with {question}; "
                        "default 'mini' for zoo: models, else 'chat'")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length cap (default 64 for the mini template, else 1024)")
    p.add_argument("--name", default="user-pair", help="pair name used in reports (default user-pair)")
    p.add_argument("--n-samples", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="at most this many dataset problems")
    p.add_argument("--n-resamples", type=int, default=9999)
    p.add_argument("--device", default="cpu")
    p.add_argument("--device-map", default=None, help="spread each model over devices with accelerate (auto, "
                   "balanced, sequential): for models larger than one GPU")
    p.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="with --device-map: memory per device, e.g. '0=70GiB,1=70GiB,cpu=200GiB'")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--granularity", default="qkv", choices=("qkv", "block", "head"),
                   help="residual-graph granularity (default qkv, the paper's; head: per attention head, as MIB)")
    p.add_argument("--attribution", default="eap", choices=("eap", "eap-ig"),
                   help="edge scores: eap (the paper's one-pass EAP, default) or eap-ig (integrated gradients "
                        "from a zero baseline, --ig-steps passes)")
    p.add_argument("--ig-steps", type=int, default=5, help="integrated-gradient steps with --attribution eap-ig")
    p.add_argument("--robustness", action="store_true",
                   help="also measure under qkv/EAP, head/EAP and qkv/EAP-IG; verdicts side by side in robustness.md")
    p.add_argument("--no-faithfulness", action="store_true", help="skip the faithfulness curves (SPEC §11)")
    p.add_argument("--share-scores", action="store_true",
                   help="keep each sample's scores under $EAPBENCH_CACHE/scores and reuse them across runs and pairs")
    p.add_argument("--batch-size", type=int, default=8, help="attribution batch size (with --memory-budget: the most)")
    p.add_argument("--memory-budget", default=None, metavar="SIZE|auto",
                   help="pack attribution batches by length under this memory (40GiB; auto = 90%% of free device "
                        "memory), checkpointing where needed (default: auto on CUDA, fixed batches on CPU)")
    p.add_argument("--gen-batch-size", type=int, default=None,
                   help="generation batch size (default 64 for the mini template, else 8; with "
                        "--gen-token-budget the most per batch)")
    p.add_argument("--gen-token-budget", type=int, default=None, metavar="TOKENS",
                   help="hf generation: pack batches by prompt length so that rows x (longest prompt + max new "
                        "tokens) stays within TOKENS (default: batches of --gen-batch-size)")
    p.add_argument("--backend", default="hf", metavar="hf|vllm|auto",
                   help="generation backend: hf (default), vllm (needs vLLM and --device cuda), auto (vllm "
                        "where it can run, else hf)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0 = torch default)")
    p.add_argument("--data-dir", default=None, help="folder with datasets not shipped offline (college_math)")
    p.add_argument("--allow-tokenizer-mismatch", action="store_true")
    p.add_argument("--report", default="eapbench-report", help="output folder (default ./eapbench-report)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit non-zero on inconclusive verdicts too")


def compare(args: argparse.Namespace) -> int:
    from .suite.report import summary_lines, write_report
    from .suite.runner import RunConfig, Runner

    from .models import ModelLoadError

    pair, _template = check_compare(args)  # every option, before any model loads (OptionError: exit 2)
    cfg = RunConfig(n_samples=args.n_samples, granularity=args.granularity, device=args.device, dtype=args.dtype,
                    n_resamples=args.n_resamples, batch_size=args.batch_size, limit=args.limit,
                    gen_token_budget=args.gen_token_budget, backend=args.backend,
                    data_dir=args.data_dir, threads=args.threads or None, memory_budget=args.memory_budget,
                    device_map=args.device_map, attribution=args.attribution, ig_steps=args.ig_steps,
                    faithfulness=not args.no_faithfulness, share_scores=args.share_scores, max_memory=args.max_memory)
    runner = Runner([pair], cfg)
    try:
        for dataset, alpha in runner.cases(pair):
            runner.verdicts(pair, dataset, alpha)
            if args.robustness:
                runner.robustness(pair, dataset, alpha)
    except ModelLoadError as exc:  # checked above as far as possible without loading; name the side
        sides = [f"{flag} {value}" for flag, value, spec in (("--base", args.base, pair.base),
                                                               ("--tuned", args.tuned, pair.tuned))
                 if spec.path in str(exc) or value in str(exc)]
        raise ModelLoadError(f"{' / '.join(sides) or 'a model'}: {exc}") from exc
    results = runner.results()
    print("\n".join(summary_lines(results)))
    paths = write_report(results, args.report, with_figures=not args.no_figures,
                         extra={"pair": pair.to_dict()})
    print(f"report: {Path(paths['markdown']).parent} (results.json, table1.md, {len(paths['figures'])} figures)")
    statuses = [v["status"] for r in results for v in r["verdicts"].values()]
    bad = {"fail"} | ({"inconclusive"} if args.strict else set())
    return 1 if any(s in bad for s in statuses) else 0


def check_compare(args: argparse.Namespace):
    """Validate every ``compare`` option (:mod:`eapbench.suite.options`); returns ``(pair, template)``."""
    from .suite import options as O
    from .suite.pairs import METHODS, MINI_GEN_BATCH, MINI_MAX_NEW_TOKENS, PairSpec, pair_from_mapping
    from .records import ModelSpec

    O.check_run_options(device=args.device, n_samples=args.n_samples, n_resamples=args.n_resamples,
                        batch_size=args.batch_size, threads=args.threads, limit=args.limit,
                        gen_batch_size=args.gen_batch_size, dtype=args.dtype)
    O.check_alphas("--alpha", args.alpha)
    O.check_placement(args.device_map, args.max_memory)
    O.check_gen_token_budget("--gen-token-budget", args.gen_token_budget)
    args.backend = O.check_backend("--backend", args.backend, args.device)  # resolved: hf or vllm
    O.check_memory_budget("--memory-budget", args.memory_budget)
    O.check_attribution(args.attribution, args.ig_steps, args.granularity, "--attribution")
    O.check_int("--max-new-tokens", args.max_new_tokens, optional=True,
                fix="the answer length cap in tokens, e.g. 1024 (omit it for the default)")
    O.check_datasets("--dataset", args.dataset)
    O.check_report("--report", args.report)
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise O.OptionError(f"--data-dir {args.data_dir}: no such folder; pass the folder that holds "
                            "<dataset>/test.jsonl")
    if args.method.lower() in O.ATTRIBUTION_METHODS:
        raise O.OptionError(f"--method {args.method}: here --method is the post-training method of the pair "
                            f"({', '.join(METHODS)}); choose the attribution method with --attribution {args.method}")
    if args.method.lower() not in METHODS:
        raise O.OptionError(f"--method {args.method}: unknown method {args.method!r}; use one of {', '.join(METHODS)}")
    try:
        PairSpec(id=args.name, base=ModelSpec("-", "-"), tuned=ModelSpec("-", "-"), method="grpo", family="-")
    except ValueError as exc:
        raise O.OptionError(f"--name {args.name}: {exc}") from None
    for flag, value in (("--base", args.base), ("--tuned", args.tuned)):
        if not value.strip():
            raise O.OptionError(f"{flag}: empty; pass a hub id, a local folder, a .gguf file or zoo:<name>")
    template = args.template or ("mini" if O.is_zoo_folder(args.base) else "chat")
    mini = template == "mini"
    max_new = args.max_new_tokens or (MINI_MAX_NEW_TOKENS if mini else 1024)
    gen_batch = args.gen_batch_size or (MINI_GEN_BATCH if mini else 8)
    pair = pair_from_mapping({"name": args.name, "base": args.base, "tuned": args.tuned, "method": args.method,
                              "template": template, "max_new_tokens": max_new,
                              "datasets": args.dataset, "alphas": args.alpha, "dtype": args.dtype,
                              "allow_tokenizer_mismatch": args.allow_tokenizer_mismatch,
                              "gen_batch_size": gen_batch, "limit": args.limit},
                             where="eapbench compare")
    models = {flag: (value, O.check_model(flag, value, spec, side=side))
              for flag, value, spec, side in (("--base", args.base, pair.base, "base"),
                                              ("--tuned", args.tuned, pair.tuned, "tuned"))}
    O.check_template("--template", template, models)
    return pair, template


def list_pairs(args: argparse.Namespace) -> int:
    from .suite.pairs import group

    for p in group(args.group):
        why = p.availability(args.device)
        print(f"{p.id:<22} {p.group:<9} {p.method:<9} {p.base.path} -> {p.tuned.path}"
              f"{'' if why is None else '  [cannot run here: ' + why + ']'}")
    return 0


def zoo(argv: Sequence[str]) -> int:
    try:
        from .zoo.build import main as zoo_main
    except ImportError as exc:
        print(f"eapbench zoo: the zoo builder is not available ({exc})", file=sys.stderr)
        return 2
    argv = list(argv)
    if argv[:1] == ["eval"]:
        from .zoo.evaluate import main as eval_main

        return int(eval_main(argv[1:]) or 0)
    if argv[:1] == ["train"]:
        argv = argv[1:]
    elif argv[:1] not in ([], ["-h"], ["--help"]):
        print(f"eapbench zoo: unknown subcommand {argv[0]!r}; use `eapbench zoo train|eval [options]`",
              file=sys.stderr)
        return 2
    return int(zoo_main(argv) or 0)


def merge(args: argparse.Namespace) -> int:
    from .suite.merge import merge_reports
    from .suite.report import partial_line, read_report, summary_lines

    paths = merge_reports(args.folders, args.out, with_figures=not args.no_figures)
    payload = read_report(args.out)
    print("\n".join(summary_lines(payload["results"], payload.get("skipped"))))
    partial = partial_line(paths)
    if partial:
        print(partial)
    print(f"report: {Path(paths['markdown']).parent} (results.json, table1.md, {len(paths['figures'])} figures)"
          + ("" if paths["complete"] else " -- PARTIAL"))
    return 0 if paths["complete"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv[:1] == ["zoo"]:
        return zoo(argv[1:])
    ap = argparse.ArgumentParser(prog="eapbench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    _compare_parser(sub)
    lp = sub.add_parser("pairs", help="list registered pairs and whether they can run here")
    lp.add_argument("group", nargs="?", default="all", help="mini, paper, lineages or all (default)")
    lp.add_argument("--device", default="cpu")
    sub.add_parser("zoo", help="rebuild the mini zoo (`eapbench zoo train [options]`) or compare its children "
                               "with sft (`eapbench zoo eval`)")
    rp = sub.add_parser("report", help="work with report folders: `eapbench report merge DIR... --out DIR`")
    rsub = rp.add_subparsers(dest="report_command", required=True)
    mp = rsub.add_parser("merge", help="merge report folders (shards, matrix jobs, machines) into one report")
    mp.add_argument("folders", nargs="+", metavar="DIR", help="report folders written by `pytest suites/ --report`")
    mp.add_argument("--out", required=True, metavar="DIR", help="folder for the merged report")
    mp.add_argument("--no-figures", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.command == "compare":
            return compare(args)
        if args.command == "pairs":
            return list_pairs(args)
        if args.command == "report":
            return merge(args)
    except (ValueError, KeyError, OSError) as exc:  # bad input (options.OptionError, data, models): one line
        msg = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())
        print(f"eapbench {args.command}: {msg}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
