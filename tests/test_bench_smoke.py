"""Every bench script still runs: each in --quick mode, as a user runs it, printing its figures.
No timing is asserted (these machines are noisy); the figures must be there and be numbers."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

NUM = r"[\d.]+"


def bench(script: str, *args, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", f"bench.{script}", "--quick", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"cores \d+ .*torch [\w.+]+ \| threads \d+", out), out  # machine info
    return out


def row(out: str, label: str) -> list[str]:
    """The whitespace-separated fields after `label` on its line."""
    line = next((l for l in out.splitlines() if l.startswith(label)), None)
    assert line is not None, f"no {label!r} line in:\n{out}"
    return line[len(label):].split()


def test_train_throughput_prints_every_contender_and_the_floor(data_path):
    out = bench("train_throughput", "--data", data_path)
    for label in ("seed (scratch, book)", "nn.RNN + nn.Linear", "fast (plain)"):
        fields = row(out, label)
        assert re.fullmatch(NUM, fields[0]) and fields[-4].endswith("x"), fields  # tok/s, x seed
        assert re.fullmatch(r"\d+%", fields[-2]), fields                          # of floor
    assert row(out, "seed (scratch, book)")[-4] == "1.00x"
    assert re.fullmatch(NUM, row(out, "floor: torch.mm + tanh")[0])
    for label in ("ceiling", "bound: floor + dW_hh"):   # tok/s and x seed
        fields = row(out, label)
        assert re.fullmatch(NUM, fields[0]) and re.fullmatch(NUM + "x", fields[-1]), fields
    assert re.search(r"^fast \(auto\) ran the (plain|batched|rows|onednn) kernel: timed", out, re.M), out
    assert re.search(r"^cpu has .* \| limits in force: .* \| torch kernels \w+", out, re.M), out


def test_train_throughput_cells_prints_the_book_the_concise_model_and_each_backend(data_path):
    """--arch lstm: the book's scratch LSTM, nn.LSTM, FastCells' auto and both backends, and
    which one auto picked."""
    out = bench("train_throughput", "--data", data_path, "--arch", "lstm")
    for label in ("book scratch LSTM", "nn.LSTM + nn.Linear", "fast (auto)", "fast (hand)",
                  "fast (onednn)"):
        fields = row(out, label)
        assert re.fullmatch(NUM, fields[0]) and fields[-3].endswith("x"), fields  # x book
        assert fields[-2].endswith("x") and re.fullmatch(NUM, fields[-1]), fields  # x concise, ppl
    assert row(out, "book scratch LSTM")[-3] == "1.00x"
    assert re.search(r"^fast \(auto\) ran the (hand|onednn) backend: timed", out, re.M), out


def test_book_run_times_train_py_against_the_books_library(data_path):
    out = bench("book_run", "--data", data_path)
    assert re.search(r"^cpu has .* \| limits in force: .* \| torch kernels \w+", out, re.M), out
    for name in ("ours", "book"):
        assert re.search(rf"^  run 1 {name}: +{NUM} s, final perplexity {NUM}", out, re.M), out
    assert re.search(rf"^ours / book: {NUM} \(median of 1 pairs", out, re.M), out


def test_generation_latency_prints_both_modes_and_checks_greedy_equality():
    out = bench("generation_latency")
    assert "greedy outputs equal the book's predict_ch8" in out
    for mode in ("greedy   ", "sampled (T="):
        fields = row(out, mode)
        numbers = [f for f in fields if re.fullmatch(NUM, f)]
        assert len(numbers) >= 2 and fields[-1].endswith("x"), fields


def test_serve_load_streams_from_the_real_app_without_errors():
    out = bench("serve_load")
    for n in ("1", "4"):
        for app in ("ours", "bare"):    # the app and the framework's floor, side by side
            fields = next(l.split() for l in out.splitlines() if l.split()[:2] == [n, app])
            n_, app_, ttfc50, ttfc95, cps5, cps50, gap95, errors, srv_cpu, rss, cli_cpu = fields
            assert errors == "0", out
            assert all(re.fullmatch(NUM, f) for f in (ttfc50, ttfc95, cps5, cps50, gap95, rss))
            assert srv_cpu.endswith("%") and cli_cpu.endswith("%")
        assert re.search(rf"^N={n} .*ours/bare: TTFC p95 {NUM}x, gap p95 {NUM}x", out, re.M), out


def test_startup_times_the_first_answer():
    out = bench("startup")
    for label in ("server answers", "first character", "first answer complete",
                  "  import torch", "  import gradio", "  load the bundled model"):
        assert re.fullmatch(NUM, row(out, label)[0]), label


def test_soak_replays_every_session_and_watches_memory():
    out = bench("soak")
    assert re.search(r"^turns: \d+ \(\d+ greedy, \d+ sampled\)", out, re.M), out
    assert "errors: 0" in out
    checked = re.search(r"replay: (\d+) greedy replies equal .* \((\d+) of them after sampled "
                        r"replies\); 0 sessions differ", out)
    assert checked and int(checked[1]) > 0, out
    assert re.search(rf"server RSS: {NUM} MB at start, {NUM} MB after", out), out
    assert "memory: flat after warm-up" in out and out.rstrip().endswith("soak passed")


def test_inspect_score_times_score_trace_and_memorisation():
    out = bench("inspect_score")
    for label in ("  score", "  forward", "  trace", "  memorise"):
        assert re.fullmatch(NUM, row(out, label)[0]), label
    assert re.fullmatch(NUM, row(out, "  score / forward: median")[0])
    assert re.search(r"score with top-5 for 2,000 characters: (within|OVER) 0.2 s", out)


def test_checkpoint_save_prints_both_kinds_and_the_book_runs_total(data_path):
    out = bench("checkpoint_save", "--data", data_path)
    for label in ("periodic", "complete"):
        assert re.fullmatch(NUM, row(out, label)[0])
    assert re.search(rf"the book run's 50 saves: {NUM} s when every save was complete, {NUM} s now",
                     out), out


def test_distributed_bench_compares_one_and_two_processes(data_path):
    out = bench("distributed", "--data", data_path, timeout=600)
    for n in ("1", "2"):
        fields = row(out, n + " ")
        assert re.fullmatch(NUM, fields[1]) and re.fullmatch(NUM, fields[4]), fields  # tok/s, x one
    assert row(out, "1 ")[4] == "1.00"
