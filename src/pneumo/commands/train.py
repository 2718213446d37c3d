"""`pneumo train`: train a preset (+ overrides), then evaluate the run and write its report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from pneumo.config import Task, TransferMode, load_config
from pneumo.errors import ConfigError

EXAMPLES = """
pneumo train --preset default                        # runs/default: model, metrics, report.html
pneumo train --preset lite0-finetune --set train.lr=1e-3 --set train.epochs=4 --name ft-lr1e-3
pneumo train --arch resnet18 --mode finetune --dataset chest_xray/ --out /shared/runs --name r18
pneumo train --resume --name ft-lr1e-3               # continue after a crash or Ctrl-C
"""


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="default", help="a shipped preset's name (`--list-models` lists them) "
                        "or a YAML file (default: default)")
    parser.add_argument("--dataset", metavar="DIR", help="the training dataset, folder or zip (default: the preset's, "
                        "else $PNEUMO_DATA)")
    parser.add_argument("--name", help="run name (folder OUT/<name>); default: the preset's name")
    parser.add_argument("--out", dest="out_dir", metavar="DIR", help="output folder holding the runs (default: runs)")
    parser.add_argument("--task", choices=get_args(Task), help="default: the preset's")
    parser.add_argument("--arch", help="architecture (see `pneumo train --list-models`); default: the preset's")
    parser.add_argument("--mode", choices=get_args(TransferMode), help="default: the preset's")
    parser.add_argument("--weights", help="imagenet | none | path to a local state dict; default: the preset's")
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--seed", type=int, help="training seed; default: the preset's")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps; default: the preset's (auto)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set train.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/<name> from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="replace an existing run folder")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation and report")
    parser.add_argument("--list-models", action="store_true", help="list the registered architectures and the "
                        "shipped presets, and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)


# shortcut flag (argparse attribute) -> the config key it sets
SHORTCUTS = {"name": "name", "out_dir": "out_dir", "dataset": "data.root", "task": "data.task", "arch": "model.name",
             "mode": "model.mode", "weights": "model.weights", "epochs": "train.epochs", "seed": "train.seed",
             "device": "train.device"}


def config_from_args(args: argparse.Namespace):
    """Preset + shortcuts + --set overrides; on --resume the run's own config.yaml is the base. An error about a
    value given by a shortcut flag names the flag (``--epochs 0``: not only ``train.epochs``)."""
    overrides = cli_overrides(args)
    preset = args.preset
    try:
        if args.resume:
            cfg = load_config(preset, overrides)
            saved = Path(cfg.out_dir) / cfg.name / "config.yaml"
            if saved.is_file():
                refuse_removed_options(saved)
                preset = str(saved)
        return load_config(preset, overrides)
    except ConfigError as exc:
        text = str(exc)
        for attr, key in SHORTCUTS.items():
            if getattr(args, attr, None) is not None and text.startswith(f"{key} "):
                flag = f"--{attr.replace('_', '-')}" + (f" ({key})" if key != attr else "")
                raise ConfigError(f"{flag}{text[len(key):]}") from None
        raise


def refuse_removed_options(saved: Path) -> None:
    """A run trained with a study option that has left the product cannot be resumed here: its config would load
    without it (a warning) and the rest of the training would be another configuration (another train fold, no EMA).

    Raises:
        ConfigError: naming the options and what to do.
    """
    from pneumo.config import REMOVED_DEFAULTS, read_yaml

    raw = read_yaml(saved)
    found = [f"{section}.{key}={value!r}" for section, keys in raw.items() if isinstance(keys, dict)
             for key, value in keys.items()
             if f"{section}.{key}" in REMOVED_DEFAULTS and value != REMOVED_DEFAULTS[f"{section}.{key}"]]
    if found:
        raise ConfigError(f"{saved.parent} was trained with {', '.join(found)}, a study option that has left the "
                          "product: resuming it here would train another configuration; finish it with the pneumo "
                          "of the commit that started it, or train it again with --force")


def cli_overrides(args: argparse.Namespace) -> list[str]:
    """The shortcut flags as ``key=value`` overrides, then ``--set``'s. Raises ConfigError when a flag and ``--set``
    name one key (``--set`` silently won, and an error about its value named the flag)."""
    given = {key: attr for attr, key in SHORTCUTS.items() if getattr(args, attr) is not None}
    for item in args.overrides:
        if (key := item.partition("=")[0].strip()) in given:
            raise ConfigError(f"--{given[key].replace('_', '-')} and --set {key}=... set the same key: give one")
    text = {"name", "out_dir", "dataset"}  # free text (a folder may be named "xr #2"): a quoted YAML string, not YAML
    return [f"{key}={json.dumps(str(value)) if attr in text else value}" for attr, key in SHORTCUTS.items()
            if (value := getattr(args, attr)) is not None] + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    if args.list_models:
        from pneumo.config import PRESET_DIR
        from pneumo.models import list_models

        print("\n".join(list_models()))
        print("... and any timm architecture by name (weights from the hub when online, or --weights FILE)")
        print(f"presets (--preset): {', '.join(sorted(p.stem for p in PRESET_DIR.glob('*.yaml')))}")
        return 0
    cfg = config_from_args(args)
    if args.print_config:
        from pneumo.config import dump_yaml

        print(dump_yaml(cfg))
        return 0
    if cfg.train.hold_memory:  # this process trains and exits: keep the memory freed tensors leave (pneumo.allocator)
        from pneumo.allocator import hold_freed_memory

        hold_freed_memory()
    if cfg.members:
        return run_ensemble(cfg, args)
    from pneumo.train.distributed import is_main_process
    from pneumo.train.run import run_lock, train

    with run_lock(cfg):  # held through the evaluation: another `train --force` of the run waits its turn
        try:
            run_dir = train(cfg, resume=args.resume, force=args.force, command=args.command_line)
        except KeyboardInterrupt:
            print(f"pneumo train: interrupted; resume with: pneumo train --resume --name {cfg.name}"
                  + (f" --out {cfg.out_dir}" if cfg.out_dir != "runs" else ""), file=sys.stderr)
            return 130
        if not is_main_process():
            return 0
        print(f"run: {run_dir}")
        if not args.no_eval:
            from pneumo.evaluate.runner import evaluate_run, summary_line
            from pneumo.explain.analysis import analysis_sections

            result = evaluate_run(run_dir, analysis=analysis_sections, progress=True)
            print(summary_line(result))
            print(f"report: {run_dir / 'report.html'}")
    return 0


def run_ensemble(cfg, args: argparse.Namespace) -> int:
    """Train (or resume) each member of the ensemble preset (the same overrides apply to each, except the name), then
    evaluate each, then their mean probability into runs/<name>. Under torchrun every rank trains each member in one
    process group and rank 0 alone evaluates, after the last member (a review of the multi-GPU path: every rank
    evaluated, the second stopped on the run lock the first held, and a gloo group made again per member could read
    the previous group's addresses and fail)."""
    from pneumo.evaluate.runner import evaluate_ensemble, evaluate_run, summary_line
    from pneumo.train.distributed import is_main_process, setup, teardown
    from pneumo.train.run import member_configs

    members = member_configs(cfg, [o for o in cli_overrides(args) if not o.startswith("name=")])
    env, _ = setup(cfg.train.device)  # under torchrun one process group for all the members (one process: nothing)
    try:
        run_dirs = _train_members(members, args)
    finally:
        teardown(env, ok=False)
    if run_dirs is None:
        return 130
    if not is_main_process() or args.no_eval:
        return 0
    for run_dir in run_dirs:
        print(summary_line(evaluate_run(run_dir, progress=True)))
    own = cfg.eval.threshold_policy if "threshold_policy" in cfg.eval.model_fields_set else None
    print(summary_line(evaluate_ensemble(run_dirs, Path(cfg.out_dir) / cfg.name, policy=own,  # else the members'
                                         replace=args.force, progress=True)))
    print(f"report: {Path(cfg.out_dir) / cfg.name / 'report.html'}")
    return 0


def _train_members(members: list, args: argparse.Namespace) -> list[Path] | None:
    """Each member trained (or resumed) in turn; None when interrupted."""
    from pneumo.train.distributed import is_main_process
    from pneumo.train.run import run_lock, train

    run_dirs = []
    for member in members:
        # --resume of an ensemble: the members the interruption never reached start now (it was "nothing to resume")
        resume = args.resume and (Path(member.out_dir) / member.name).exists()
        with run_lock(member):
            try:
                run_dirs.append(train(member, resume=resume, force=args.force, command=args.command_line))
            except KeyboardInterrupt:
                print(f"pneumo train: interrupted; resume the ensemble with: pneumo train --preset {args.preset} "
                      "--resume (and the same options)", file=sys.stderr)
                return None
        if is_main_process():
            print(f"member run: {run_dirs[-1]}")
    return run_dirs
