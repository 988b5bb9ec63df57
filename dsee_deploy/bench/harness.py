"""One dsee-bench run: variants, interleaved timing at every (batch, sequence) shape, speed-ups against every
baseline, FLOPs bounds, accuracy, and the results written as JSON, Markdown and plots."""

from __future__ import annotations

import importlib.util

from ..errors import DSEEError
from ..speed.machine import machine, versions
from ..speed.timing import interleave, speedup
from ..tasks import CausalLM
from .config import BenchConfig
from .results import BenchResults
from .variants import Variant, engine_variant, feeds_for, runner, source_of, torch_variant


def collect_variants(engines: list[str], baselines: list[str], options: BenchConfig) -> list[Variant]:
    if not baselines or not engines:
        raise DSEEError(
            "dsee-bench needs --baseline (the dense engine to compare with) and --engine (the DSEE engines); "
            "a suite's [bench] needs baselines and engines"
        )
    variants = [engine_variant(b, True) for b in baselines]
    variants += [engine_variant(e, False) for e in engines]
    if options.torch_variants and importlib.util.find_spec("torch") is not None:
        engines = variants[len(baselines) :]
        dense = source_of(variants[0])
        if dense.is_dir():
            variants.append(torch_variant(dense, variants[0], "pytorch eager", "pytorch eager (dense)"))
        else:
            print(f"dsee-bench: no PyTorch eager variant: the dense source '{dense}' is not here")
        # The first engine exported from a DSEE checkpoint, run as research code runs it: update unmerged.
        dsee = next((v for v in engines if (source_of(v) / "dsee_config.json").is_file()), None)
        if dsee is not None:
            variants.append(
                torch_variant(source_of(dsee), dsee, "pytorch + DSEE branch", "pytorch + DSEE branch")
            )
    variants += gpu_variants(variants)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise DSEEError(f"two variants are named alike ({', '.join(names)}): name them with NAME=PATH")
    return variants


def gpu_variants(variants: list[Variant]) -> list[Variant]:
    """The ONNX engines again on CUDA and TensorRT where onnxruntime-gpu offers them (none on a CPU build)."""
    import dataclasses

    import onnxruntime as ort

    available = ort.get_available_providers()
    extra = []
    for provider, tag in (("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")):
        if provider in available:
            extra += [
                dataclasses.replace(v, name=f"{v.name} [{tag}]", provider=provider, baseline=False)
                for v in variants
                if v.kind == "onnxruntime" and v.precision not in ("int8", "int4")  # CPU-only kernels
            ]
    return extra


def run(engines: list[str], baselines: list[str], options: BenchConfig) -> BenchResults:
    """Time `engines` against `baselines` (dsee-export directories, PATH or NAME=PATH): the results (fields in
    report.py)."""
    from ..runtime import spin_in_force

    spin_us = spin_in_force(options.spin_us)
    variants = collect_variants(engines, baselines, options)
    causal = variants[0].task == CausalLM.kind
    if causal:  # generation is timed through the engines' own decoding loop: ONNX variants only
        variants = [v for v in variants if v.kind == "onnxruntime"]
    eval_data, texts = {}, None
    if options.eval_data and causal:  # read and checked before the timing, which takes minutes
        from .decode import read_texts

        texts = read_texts(options.eval_data)
    elif options.eval_data:
        from .accuracy import load_for

        eval_data = load_for(variants, options.eval_data, options.threads, spin_us)
    # A causal LM is timed generating text (bench/decode.py), not at encoder shapes.
    shapes = [] if causal else [(b, s) for s in options.seq_lens for b in options.batch_sizes]
    results = BenchResults(
        title=options.title,
        machine=machine(),
        threads=options.threads,
        versions=versions(),
        method={
            "warmup": options.warmup,
            "rounds": options.rounds,
            "target_block_ms": options.target_block_ms,
            "interleaved": True,
            "spin_us": spin_us,
            "spinning": spin_us > 0,
            "speedup": "median over rounds of baseline best / variant best in the same round",
        },
        primary_baseline=variants[0].name,
        variants=[{**v.to_dict(), "flops": {s: v.flops(s) for s in options.seq_lens}} for v in variants],
    )
    time_shapes(results, variants, shapes, options, spin_us)
    if causal:
        time_decoding(results, variants, options, spin_us, texts)
    if options.profile and shapes:
        from .profile import profile

        batch, seq = shapes[0]
        tokens = feeds_for(variants, batch, seq)
        results.profile = {
            "batch": batch,
            "seq": seq,
            **{
                v.name: profile(v.path, v.feeds(*tokens), options.threads, spin_us)
                for v in variants
                if v.kind == "onnxruntime" and v.provider in ("-", "CPUExecutionProvider")
            },
        }
    if options.eval_data and not causal:
        results.accuracy = accuracy(variants, eval_data)
        from .texts import time_texts

        results.texts = time_texts(
            variants, eval_data, results.accuracy, source_of(variants[0]), options, spin_us
        )
    return results


def time_shapes(results: BenchResults, variants: list[Variant], shapes: list, options: BenchConfig, spin_us):
    """Every variant timed interleaved at each (batch, sequence) shape, and its speed-up against every
    baseline with the FLOPs bound beside it."""
    from tqdm.auto import tqdm

    with tqdm(total=len(shapes) * options.rounds, desc="timing", unit="round") as bar:
        for batch, seq in shapes:
            bar.set_postfix_str(f"batch {batch}, seq {seq}")
            tokens = feeds_for(variants, batch, seq)
            runners = {v.name: runner(v, tokens, options.threads, spin_us) for v in variants}
            timings = interleave(
                runners, options.rounds, options.warmup, options.target_block_ms / 1000, progress=bar.update
            )
            for v in variants:
                results.timings.append(
                    {"variant": v.name, "batch": batch, "seq": seq, **timings[v.name].summary(batch)}
                )
                for b in (b for b in variants if b.baseline and b is not v):
                    up = speedup(timings[b.name], timings[v.name])
                    bound = b.flops(seq) / v.flops(seq)
                    results.speedups.append(
                        {
                            "variant": v.name,
                            "baseline": b.name,
                            "batch": batch,
                            "seq": seq,
                            **up,
                            "flops_bound": bound,
                            "bound_achieved": up["median"] / bound,
                        }
                    )


def time_decoding(
    results: BenchResults, variants: list[Variant], options: BenchConfig, spin_us, texts
) -> None:
    """A causal LM's generation speed, and its perplexity on `texts` where given."""
    from tqdm.auto import tqdm

    from .decode import perplexity, time_generation

    total = len(options.batch_sizes) * options.decode_rounds
    with tqdm(total=total, desc="generation", unit="round") as bar:
        results.generation = time_generation(variants, options, spin_us, progress=bar.update)
    if texts is not None:
        results.perplexity = {
            v.name: perplexity(v, texts, options.threads, spin_us)
            for v in variants
            if v.kind == "onnxruntime"
        }


def accuracy(variants: list[Variant], data: dict) -> dict:
    from tqdm.auto import tqdm

    from .accuracy import evaluate

    return {
        v.name: evaluate(v, data[v.name])
        for v in tqdm(variants, desc="accuracy", unit="variant")
        if v.name in data
    }
