"""`proda <verb>`: a thin command line over the library.

Expected problems (a wrong path, a bad config key, a corrupt file) are ProdaError: printed once, without a
traceback, with exit status 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ProdaError


def parse_size(text: str) -> tuple[int, int]:
    """An argparse type: "WxH" -> (W, H), both positive (also used by the benchmark scripts)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 192x96, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1337,1,2, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def _parser() -> argparse.ArgumentParser:
    from .data.registry import dataset_names  # the dataset table: every --dataset takes its names

    datasets = list(dataset_names())
    p = argparse.ArgumentParser(prog="proda", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one stage from a YAML config (resumes automatically)")
    t.add_argument("config", help="YAML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help="dotted overrides such as optim.lr=0.01 run.out_dir=runs/x")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    ss = sub.add_parser("pretrain-ssl", help="self-supervised (SimCLR-style) backbone pre-training on target images")
    ss.add_argument("config", help="YAML config with stage: ssl (see configs/synthetic/ssl.yaml)")
    ss.add_argument("overrides", nargs="*")
    ss.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("evaluate", help="mIoU of a checkpoint, or of a folder of prediction PNGs")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a proda checkpoint")
    src.add_argument("--predictions", help="folder of prediction PNGs (trainIds or label ids) named like the images")
    e.add_argument("--dataset", required=True, choices=datasets)
    e.add_argument("root", help="dataset root in its official layout")
    e.add_argument("--split", default="val")
    e.add_argument("--condition", default=None,
                   help="ACDC conditions (fog,night,rain,snow; default all, one mIoU row each) or Dark Zurich "
                        "time of day (default night)")
    e.add_argument("--num-classes", type=int, default=None,
                   help="protocol (default: the checkpoint's; 19 for --predictions)")
    e.add_argument("--pred-format", choices=["auto", "trainid", "labelid"], default="auto")
    e.add_argument("--input-size", type=parse_size, default=None, help="network input WxH (default: the checkpoint's)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--mode", choices=["whole", "slide"], default="whole", help="whole image or sliding windows")
    e.add_argument("--scales", default="1", help="comma-separated input scales, e.g. 0.75,1,1.25")
    e.add_argument("--flip", action="store_true", help="add the mirrored image (test-time augmentation)")
    e.add_argument("--crop-size", type=parse_size, default=None, help="sliding-window size WxH")
    e.add_argument("--plots", default=None, help="write per-class IoU and confusion-matrix PNGs into this folder")
    e.add_argument("--json", help="write the result as JSON")

    pd = sub.add_parser("predict", help="segment images: colour maps, overlays, trainId or label-id PNGs")
    pd.add_argument("--checkpoint", required=True)
    pd.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    pd.add_argument("--out", required=True)
    pd.add_argument("--format", default="color",
                    help="comma-separated: color,overlay,trainid,labelid, or a benchmark server's: acdc, dark_zurich")
    pd.add_argument("--invalid-threshold", type=float, default=0.5,
                    help="dark_zurich: pixels of lower confidence are marked invalid in labelTrainIds_invalid/")
    pd.add_argument("--mode", choices=["whole", "slide"], default="whole")
    pd.add_argument("--scales", default="1")
    pd.add_argument("--flip", action="store_true")
    pd.add_argument("--input-size", type=parse_size, default=None)
    pd.add_argument("--crop-size", type=parse_size, default=None)
    pd.add_argument("--batch-size", type=int, default=1)
    pd.add_argument("--device", default="cpu")
    pd.add_argument("--no-progress", action="store_true")

    cv = sub.add_parser("convert", help="turn an original ProDA .pkl or a torchvision/SimCLR backbone into a proda checkpoint")
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.add_argument("--format", default="auto", choices=["auto", "original", "torchvision", "simclr"])
    cv.add_argument("--num-classes", type=int, choices=[19, 16, 13], default=None,
                    help="required for a backbone-only file (it gets a fresh head)")

    rp = sub.add_parser("report", help="training curves of a run folder as a PNG")
    rp.add_argument("run_dir")
    rp.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png)")

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    c = dsub.add_parser("check", help="validate a dataset layout and print its class histogram")
    c.add_argument("--dataset", required=True, choices=datasets)
    c.add_argument("root")
    c.add_argument("--split", default=None, help="split (default: the dataset's first, e.g. Cityscapes train)")
    c.add_argument("--num-classes", type=int, default=None,
                   help="a protocol the dataset offers (19/16/13 for Cityscapes classes; default: its usual one)")
    c.add_argument("--json", help="write counts and problems as JSON")
    pc = dsub.add_parser(
        "prepare", help="write a trainId label cache and per-image class statistics (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Decode every label once (as training does; bad files are reported and left out) and write\n"
                    "  OUT/<label path relative to ROOT>  8-bit PNGs of the dataset's class ids (255 = ignore),\n"
                    "  OUT/class_stats_<split>.npz       pixels per class per image (split 'all' for gta5/synthia),\n"
                    "with OUT = ROOT/proda_cache by default. Training and `proda evaluate` read ROOT/proda_cache\n"
                    "automatically when it exists (another folder: data.source_label_cache=DIR or\n"
                    "data.target_label_cache=DIR; null turns the cache off); a cached label is used only if it is\n"
                    "not older than its original, so edited labels are never shadowed. One cache serves every\n"
                    "protocol (19/16/13 classes). Interrupted? Run the same command again: finished images are\n"
                    "skipped. Image files are only checked for their size: `proda data check` decodes them.")
    pc.add_argument("--dataset", required=True, choices=datasets)
    pc.add_argument("root")
    pc.add_argument("--split", default=None, help="Cityscapes split (default train; run again with --split val)")
    pc.add_argument("--num-classes", type=int, default=None,
                    help="protocol of the printed class table (default: the dataset's usual one); the cache holds "
                         "the dataset's own classes")
    pc.add_argument("--out", default=None, help="cache folder (default ROOT/proda_cache)")
    pc.add_argument("--verify", action="store_true",
                    help="also decode every cached file and check it against its record (rewrite it if wrong)")
    pc.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("synth", help="write the synthetic domain-shift benchmark (gta5/ + cityscapes/ layouts)")
    s.add_argument("out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=parse_size, default=None, help="image size WxH")
    s.add_argument("--n-source", type=int, default=None)
    s.add_argument("--n-target", type=int, default=None)
    s.add_argument("--n-val", type=int, default=None)
    s.add_argument("--gap", type=float, default=None,
                   help="share of the target's appearance change, 0..2 (above 1 it is extrapolated; "
                        "default: the calibrated benchmark's)")

    pr = sub.add_parser("prototypes", help="class prototypes of a trained model over the target training set")
    pr.add_argument("--checkpoint", required=True, help="the warm-up checkpoint")
    pr.add_argument("--config", required=True, help="config naming the target data (e.g. the stage-1 config)")
    pr.add_argument("--out", default=None, help="output file (default: prototypes.pth beside the checkpoint)")
    pr.add_argument("overrides", nargs="*", help="dotted config overrides")
    pr.add_argument("--no-progress", action="store_true")

    pl = sub.add_parser("pseudo-label", help="store pseudo labels of the target training set")
    pl.add_argument("--checkpoint", required=True)
    pl.add_argument("--config", required=True, help="config naming the target data")
    pl.add_argument("--soft", action="store_true", help="soft labels (class probabilities at output resolution) "
                    "for stage 1; default: hard labels (flip-averaged argmax + confidence) for distillation")
    pl.add_argument("--out", default=None, help="output folder (default: pseudo_soft/ or pseudo_hard/ beside the checkpoint)")
    pl.add_argument("overrides", nargs="*", help="dotted config overrides")
    pl.add_argument("--no-progress", action="store_true")

    pp = sub.add_parser("pipeline", help="every stage in order, each in its own folder, resumable, with a report")
    pp.add_argument("config", help="pipeline file (configs/{synthetic,gta5,synthia}/pipeline.yaml)")
    pp.add_argument("overrides", nargs="*", help="out_dir=DIR and dotted overrides applied to every stage")
    pp.add_argument("--from", dest="start_from", default=None, help="rerun from this step (and every later one)")
    pp.add_argument("--seeds", type=_seeds, default=None,
                    help="training seeds, e.g. 1337,1,2: the pipeline once per seed in OUT/seed_N, and OUT/report.md "
                         "with each stage's mean +- std over them (one seed: run.seed=N, today's layout)")
    pp.add_argument("--no-progress", action="store_true")

    ab = sub.add_parser(
        "ablation", help="ProDA's ablation rows from one warm-up model per seed, mean +- std over seeds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per seed, in OUT/seed_N: the pipeline's steps plus three stage-1 variants, each from the same\n"
                    "warm-up model with stage 1's budget. Rows:\n"
                    "  source_only, oracle  the references (labelled source; target labels)\n"
                    "  warmup               the adversarial warm-up, no further training\n"
                    "  self_training        CE on the warm-up's labels, argmax P0 (stage1.rectify=false)\n"
                    "  denoise              SCE on prototype-rectified labels (the config's SCE weights, or the\n"
                    "                       paper's 0.1/1.0 where it sets them to 0), no consistency, no regulariser\n"
                    "  denoise_structure    + weak/strong prototype consistency (the config's weight, or 10)\n"
                    "  stage1               the pipeline's stage 1 as configured (the paper adds the regulariser)\n"
                    "  distill              stages 2 and 3 after stage1\n"
                    "Writes OUT/ablation.json, ablation.md and ablation.png. Finished rows are skipped, an\n"
                    "interrupted one resumes: run the same command again.")
    ab.add_argument("config", help="pipeline file (e.g. synthetic/pipeline)")
    ab.add_argument("overrides", nargs="*", help="out_dir=DIR and dotted overrides applied to every run")
    ab.add_argument("--seeds", type=_seeds, default=None, help="training seeds, e.g. 1337,1,2 (default: run.seed)")
    ab.add_argument("--no-progress", action="store_true")

    m = sub.add_parser("demo", help="the end-to-end run on the synthetic benchmark, with a report")
    m.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    m.add_argument("--data", default=None, help="existing folder with gta5/ and cityscapes/ (default: generate)")
    m.add_argument("--no-progress", action="store_true")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, accepting ``key=value`` overrides after options too (``proda train CFG --no-progress a=1``)."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and all("=" in r and not r.startswith("-") for r in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return _dispatch(args)
    except ProdaError as exc:
        print(f"proda {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept, run the same command again to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("train", "pretrain-ssl"):
        from .config import load_config
        from .adapt.registry import train
        from .errors import ConfigError

        cfg = load_config(args.config, args.overrides)
        if args.command == "pretrain-ssl" and cfg.stage != "ssl":
            raise ConfigError(f"{args.config}: stage is {cfg.stage!r}; pretrain-ssl needs a config with stage: ssl")
        result = train(cfg, progress=not args.no_progress)
        from .engine import dist

        if not dist.is_main():  # torchrun: one summary line, from rank 0
            return 0
        miou = result.final.get("miou")
        print(f"{result.run_dir}: iteration {result.iteration}, target val mIoU "
              f"{miou:.2f} (best {result.best_miou:.2f})" if miou is not None else f"{result.run_dir}: done")
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "predict":
        from .engine.predict import predict_command

        return predict_command(args.checkpoint, args.inputs, args.out, formats=args.format, mode=args.mode,
                               scales=args.scales, flip=args.flip, input_size=args.input_size, device=args.device,
                               crop_size=args.crop_size, batch_size=args.batch_size, progress=not args.no_progress,
                               invalid_threshold=args.invalid_threshold)
    if args.command == "convert":
        from .models.convert import convert_command

        return convert_command(args.src, args.dst, args.format, args.num_classes)
    if args.command == "report":
        from .engine.plots import report_command

        print(report_command(args.run_dir, args.out))
        return 0
    if args.command == "prototypes":
        from .config import load_config
        from .adapt.prototypes import prototypes_command

        prototypes_command(args.checkpoint, load_config(args.config, args.overrides), args.out, not args.no_progress)
        return 0
    if args.command == "pseudo-label":
        from .config import load_config
        from .engine.pseudo_label_generation import pseudo_label_command

        pseudo_label_command(args.checkpoint, load_config(args.config, args.overrides), soft=args.soft,
                             out=args.out, progress=not args.no_progress)
        return 0
    if args.command == "data" and args.data_command == "check":
        from .data.check import run_check_command

        return run_check_command(args.dataset, args.root, args.split, args.num_classes, args.json)
    if args.command == "data" and args.data_command == "prepare":
        from .data.prepare import run_prepare_command

        return run_prepare_command(args.dataset, args.root, args.split, args.num_classes, args.out,
                                   verify=args.verify, progress=not args.no_progress)
    if args.command == "synth":
        from .data.synthetic import write_benchmark

        kwargs = {k: v for k, v in {"size": args.size, "n_source": args.n_source, "n_target": args.n_target,
                                    "n_val": args.n_val, "gap": args.gap}.items() if v is not None}
        write_benchmark(args.out, seed=args.seed, **kwargs)
        print(f"wrote {Path(args.out) / 'gta5'} and {Path(args.out) / 'cityscapes'}")
        return 0
    if args.command == "pipeline":
        from .engine import dist
        from .pipeline import format_seeds_summary, run_pipeline, run_seeds
        from .report import format_table

        if args.seeds is None:
            report = run_pipeline(args.config, args.overrides, start_from=args.start_from, progress=not args.no_progress)
            table = format_table(report)
        else:  # one seed is the plain pipeline with that seed
            result = run_seeds(args.config, args.overrides, args.seeds, start_from=args.start_from,
                               progress=not args.no_progress)
            table = format_table(result) if len(args.seeds) == 1 else format_seeds_summary(result)
        if dist.is_main():
            print("\n" + table)
        return 0
    if args.command == "ablation":
        from .ablation import format_ablation, run_ablation
        from .engine import dist

        summary = run_ablation(args.config, args.overrides, args.seeds, progress=not args.no_progress)
        if dist.is_main():
            print("\n" + format_ablation(summary))
        return 0
    if args.command == "demo":
        from .demo import run_demo

        run_demo(args.out, data=args.data, progress=not args.no_progress)
        return 0
    raise AssertionError(args.command)


def _evaluate(args: argparse.Namespace) -> int:
    from .io import write_json

    if args.predictions:
        from .engine.score_predictions import score_predictions_command

        if args.dataset != "cityscapes":
            raise ProdaError("--predictions scores against Cityscapes ground truth: use --dataset cityscapes")
        return score_predictions_command(args.predictions, args.root, args.split, args.num_classes or 19, args.json,
                                       pred_format=args.pred_format)

    from .data.registry import build_dataset, dataset_class
    from .engine.device import resolve_device
    from .engine.inference import evaluate_per_condition, format_condition_table
    from .engine.metrics import summarize
    from .errors import DataError
    from .models.weights import load_trained_model

    device = resolve_device(args.device)
    model, meta = load_trained_model(args.checkpoint, device)
    num_classes = meta["num_classes"]
    if args.num_classes is not None and args.num_classes != num_classes:
        raise ProdaError(f"{args.checkpoint}: a {num_classes}-class model cannot be scored as {args.num_classes} classes")
    whole = dataset_class(args.dataset).splits(args.root) == ("all",)  # GTA5/SYNTHIA are used whole
    reader = build_dataset(args.dataset, args.root, split=None if whole else args.split, num_classes=num_classes,
                           subset=args.condition)
    if not reader.has_labels:
        raise DataError(f"{args.root}: the {args.split} split of {args.dataset} has no public labels to score against; "
                        f"`proda predict --format {args.dataset}` writes what its benchmark server takes")
    input_size = args.input_size or (tuple(meta["input"]["size"]) if meta["input"].get("size") else None)
    scales = tuple(float(v) for v in args.scales.split(","))
    matrices = evaluate_per_condition(model, reader, device, num_classes, input_size=input_size,
                                      mean=meta["input"]["mean"], std=meta["input"]["std"], mode=args.mode,
                                      scales=scales, flip=args.flip, crop_size=args.crop_size)
    cm = matrices["all"]
    result = summarize(cm, meta["class_names"])  # the model's own classes, whatever the dataset
    print(cm.format_table(meta["class_names"]))
    if args.plots:
        from .engine.plots import evaluation_plots

        for path in evaluation_plots(cm, meta["class_names"], args.plots):
            print(f"wrote {path}")
    if len(matrices) > 1:  # ACDC: one row per condition, then the whole
        images = {c: len(reader.only(c)) for c in reader.conditions} | {"all": len(reader)}
        print(format_condition_table(matrices, images))
        result["per_condition"] = {c: {**m.to_dict(meta["class_names"]), "num_images": images[c]}
                                   for c, m in matrices.items() if c != "all"}
    print(f"mIoU {result['miou']:.2f}" + (f"  (13 classes: {result['miou_13']:.2f})" if "miou_13" in result else ""))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
