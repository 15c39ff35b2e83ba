"""Training time of model.head_factors auto against false on the default ML-100K tasks, alternated
twice in one process (run from the repository root after `metarec pipeline run` or `metarec
tasks build`): OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/head_auto_cost.py"""
import dataclasses, time, tempfile
from metarec.config import load_config
from metarec.pipeline.train import train_meta_model
cfg = load_config("params.yaml")
for hf in ("auto", False, "auto", False):
    with tempfile.TemporaryDirectory() as d:
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head_factors=hf),
                                train=dataclasses.replace(cfg.train, out_dir=d, progress=False))
        t = time.perf_counter(); s = train_meta_model(c, resume=False, track=False)
        print(hf, round(time.perf_counter() - t, 1), s["best_step"], s["model"], flush=True)
