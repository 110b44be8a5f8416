"""The Space under load, on loopback: latency against predict(), throughput, memory and disk, in one run.

    python benchmarks/app.py --model MODEL_DIR [--image FRAME.jpeg] [--requests 500] [--clients 10]

It launches app.py on a free 127.0.0.1 port with the given model (the app's own backend choice),
then measures:
- the median sequential /predict latency after warm-up, and predict() in this process on the same
  image (the app's backend), and their ratio; beside them, the same request to
  benchmarks/gradio_floor_app.py (the same wiring, no model: the upload sent back), Gradio's floor,
  so that the rest is the app's own serving work. A request is what the page does: upload the frame,
  call /predict, read the result stream and fetch the overlay, over kept-alive connections (the
  uncertainty view is rendered only when its tab is opened).
  gradio_client's latency is printed beside it: it opens a new HTTP client (with a new TLS
  context, even for http://) for every upload and download, which costs the client CPU time;
- throughput with `--clients` clients sending `--burst` requests in all;
- server RSS (the app process and its children) at idle and after each 100 of `--requests`;
- the growth of the app's temp folders (Gradio's cache and the app's own) after them.
Every loop is bounded in count and time, and talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from neopolyp_hf.onnx.loading import load_segmenter
from neopolyp_hf.serving.loopback import start_app, stop_app

ROOT = Path(__file__).resolve().parents[1]
REAL_TEST = ROOT.parent / "shared" / "data" / "bkai-igh-neopolyp" / "test" / "test"


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (from /proc)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.is_file():
        pids += [int(p) for p in children.read_text().split()]
    for each in pids:
        status = Path(f"/proc/{each}/status")
        if status.is_file():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class PageClient:
    """One browser-like client of the app's /predict: kept-alive connections, Gradio's HTTP API."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)

    def predict(self, image: Path) -> list:
        """Upload, call /predict, wait for its result, fetch the overlay; returns the outputs."""
        upload = self.http.post("/gradio_api/upload", files=[("files", (image.name, image.read_bytes()))])
        upload.raise_for_status()
        payload = {"data": [{"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}, False, 0.5]}
        call = self.http.post("/gradio_api/call/predict", json=payload)
        call.raise_for_status()
        event, outputs = None, None
        with self.http.stream("GET", f"/gradio_api/call/predict/{call.json()['event_id']}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.partition(":")[2].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    outputs = json.loads(line[5:])
                    break
        if event != "complete":
            raise RuntimeError(f"/predict ended with {event}: {outputs}")
        fetched = self.http.get(outputs[0]["url"])  # the overlay, as the page shows it
        fetched.raise_for_status()
        if len(fetched.content) < 1000:
            raise RuntimeError(f"overlay {outputs[0]['url']} came back with {len(fetched.content)} bytes")
        return outputs


def folder_mb(folder: Path) -> float:
    """Bytes of all files under a folder, in MB."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (or Hub repo id) the app serves")
    parser.add_argument("--image", default=None, help="the frame sent (default: the first shared test frame)")
    parser.add_argument("--sequential", type=int, default=20, help="sequential requests for the latency median")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--burst", type=int, default=50, help="requests in all for the throughput figure")
    parser.add_argument("--requests", type=int, default=500, help="requests for the memory and disk figures")
    parser.add_argument("--max-seconds", type=float, default=1500, help="stop sending after this long")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    image = Path(args.image) if args.image else sorted(REAL_TEST.glob("*.jpeg"))[0]
    started = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        temp = Path(workdir)
        (temp / "app").mkdir()
        env = {
            "NEOPOLYP_MODEL": args.model,
            "GRADIO_TEMP_DIR": str(temp / "gradio"),
            "TMPDIR": str(temp / "app"),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1",
        }
        process, url = start_app(ROOT / "app.py", env, timeout=240)
        floor_process = None
        try:
            floor_process, floor_url = start_app(ROOT / "benchmarks" / "gradio_floor_app.py", env, timeout=240)
            page, floor_page = PageClient(url), PageClient(floor_url)
            client = Client(url, verbose=False)
            payload = handle_file(str(image))
            for _ in range(2):  # warm-up
                page.predict(image)
                floor_page.predict(image)
                client.predict(payload, api_name="/predict")
            segmenter, info = load_segmenter(args.model)
            assert segmenter.predict(image).overlay  # warm-up
            idle_rss = rss_mb(process.pid)
            base_disk = folder_mb(temp)

            def timed_ms(call) -> float:
                t0 = time.perf_counter()
                call()
                return 1000 * (time.perf_counter() - t0)

            # Interleaved, so that both medians see the same machine (a slower or busier moment
            # cannot land on one side of the ratio only).
            api_times, local_times, floor_times = [], [], []
            for _ in range(args.sequential):
                api_times.append(timed_ms(lambda: page.predict(image)))
                local_times.append(timed_ms(lambda: segmenter.predict(image).overlay))  # the app renders it too
                floor_times.append(timed_ms(lambda: floor_page.predict(image)))
            api_ms, local_ms = statistics.median(api_times), statistics.median(local_times)
            floor_ms = statistics.median(floor_times)
            stop_app(floor_process)
            gradio_client_ms = statistics.median(
                [timed_ms(lambda: client.predict(payload, api_name="/predict")) for _ in range(args.sequential)]
            )
            segmenter = None  # its memory is not the server's

            local = threading.local()  # one kept-alive client per load thread
            errors: list[str] = []

            def call(_: int) -> None:
                try:
                    if not hasattr(local, "page"):
                        local.page = PageClient(url)
                    local.page.predict(image)
                except Exception as error:  # counted and reported, never hidden
                    errors.append(f"{type(error).__name__}: {str(error)[:120]}")

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(call, range(args.burst)))
            throughput = (args.burst - len(errors)) / (time.perf_counter() - t0)

            rss_by_hundred = []
            sent = 0
            with ThreadPoolExecutor(args.clients) as pool:
                while sent < args.requests and time.time() - started < args.max_seconds:
                    step = min(100, args.requests - sent)
                    list(pool.map(call, range(step)))
                    sent += step
                    rss_by_hundred.append((sent, rss_mb(process.pid)))
            disk_growth = folder_mb(temp) - base_disk
        finally:
            stop_app(process)
            if floor_process is not None and floor_process.poll() is None:
                stop_app(floor_process)

    print(
        f"\napp.py on 127.0.0.1, backend {info.backend} ({info.precision}), image {image.name}, {os.cpu_count()} CPUs\n"
    )
    print("| figure | value |")
    print("|---|---|")
    print(f"| /predict median latency, sequential ({args.sequential} after warm-up) | {api_ms:.0f} ms |")
    print(f"| the same through gradio_client (its own per-transfer overhead included) | {gradio_client_ms:.0f} ms |")
    print(f"| predict() in process, same image and backend, overlay included | {local_ms:.0f} ms |")
    print(f"| /predict ÷ predict() | {api_ms / local_ms:.2f}x |")
    print(f"| Gradio's floor: the same request to the same wiring without a model | {floor_ms:.0f} ms |")
    print(f"| the app's own serving work: /predict - predict() - the floor | {api_ms - local_ms - floor_ms:.0f} ms |")
    print(f"| throughput, {args.clients} clients x {args.burst} requests | {throughput:.2f} req/s |")
    print(f"| server RSS at idle (after warm-up) | {idle_rss:.0f} MB |")
    for count, rss in rss_by_hundred:
        print(f"| server RSS after {count} more requests | {rss:.0f} MB |")
    print(f"| temp + cache growth after {sent} requests | {disk_growth:.1f} MB |")
    print(f"| failed requests (of {args.burst + sent} under load) | {len(errors)} |")
    for error in sorted(set(errors))[:5]:
        print(f"  failure: {error}")


if __name__ == "__main__":
    main()
