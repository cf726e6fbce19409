"""The README's main job, end to end: train in the training image on the
bundled sample photos, serve the model with the serving image, predict photos
the model never saw. Then the served model is checked as a client would."""
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.docker import built_image

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(docker, train_image, tmp_path_factory, free_port):
    serve_image = built_image("BYOC_SERVE_IMAGE", "pytorch-byoc-serve:cpu")   # as shipped: the default engine
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, DOCKER=docker, BYOC_TRAIN_IMAGE=train_image, BYOC_SERVE_IMAGE=serve_image,
               BYOC_DEMO_DIR=str(out), BYOC_DEMO_PORT=str(free_port()))
    run = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], capture_output=True, text=True,
                         env=env, timeout=1200)
    return run, out


def test_demo_trains_serves_and_predicts_the_photos(demo):
    run, out = demo
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    model = out / "ml" / "model"
    spec = json.loads((model / "model.json").read_text())
    assert spec["classes"] == ["brick", "grass", "gravel"]
    assert (model / "model.pt").is_file() and (model / "code" / "inference.py").is_file()
    assert (out / "ml" / "output" / "success").is_file()
    # one answer per photo, its top 3 (every class once, most probable first), all right
    answers = dict(line.split(": ", 1) for line in run.stdout.splitlines() if line.endswith(tuple("0123456789")) and ".jpg: " in line)
    assert set(answers) == {"brick.jpg", "grass.jpg", "gravel.jpg"}
    for photo, answer in answers.items():
        top3 = [item.split() for item in answer.split(", ")]
        assert sorted(label for label, _ in top3) == ["brick", "grass", "gravel"], answer
        probs = [float(p) for _, p in top3]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 0.01, answer
    right = sum(answer.split()[0] == photo[:-4] for photo, answer in answers.items())
    assert right == 3, answers
    assert "done: 3 of 3 photos classified right" in run.stdout


@pytest.fixture(scope="module")
def server(docker, serve_image, demo, free_port):
    _, out = demo
    port = free_port()
    name = f"byoc-test-serve-{port}"
    subprocess.run([docker, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                    "-v", f"{out / 'ml' / 'model'}:/opt/ml/model:ro", serve_image], check=True,
                   capture_output=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url + "/ping", timeout=2).status == 200:
                break
        except (OSError, urllib.error.URLError):
            time.sleep(1)
    else:
        logs = subprocess.run([docker, "logs", name], capture_output=True, text=True)
        subprocess.run([docker, "rm", "-f", name], capture_output=True)
        pytest.fail("serve did not become healthy:\n" + logs.stdout[-3000:] + logs.stderr[-3000:])
    yield name, url
    subprocess.run([docker, "rm", "-f", name], capture_output=True)


def post(url, body, content_type):
    request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_a_bad_request_gets_a_4xx_json_reason_and_the_server_stays_up(server):
    _, url = server
    status, body = post(url, b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")
    assert 400 <= status < 500
    reason = json.loads(body)
    text = json.dumps(reason)
    assert "Traceback" not in text and "/opt/" not in text and "site-packages" not in text
    status, _ = post(url, b"{}", "application/vnd.unknown")
    assert status == 415
    photo = (ROOT / "samples/photos/brick.jpg").read_bytes()
    status, body = post(url, photo, "image/jpeg")
    assert status == 200 and json.loads(body)["predictions"][0]["label"] in ("brick", "grass", "gravel")


@pytest.mark.both_engines
def test_server_is_non_root_and_only_8080_answers_outside(docker, server):
    name, _ = server
    user = subprocess.run([docker, "exec", name, "id", "-u"], capture_output=True, text=True)
    assert user.stdout.strip() != "0"
    ip = subprocess.run([docker, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
                        capture_output=True, text=True).stdout.strip()
    probe = ("import socket,sys\n"
             "for port in (8080, 8081, 8082, 7070, 7071, 8083):\n"
             "    s = socket.socket(); s.settimeout(2)\n"
             "    print(port, s.connect_ex((sys.argv[1], port)) == 0)\n")
    # from another container on the same network, as a peer on SageMaker's network would
    seen = subprocess.run([docker, "run", "--rm", "--entrypoint", "python", docker_image_of(docker, name),
                           "-c", probe, ip], capture_output=True, text=True, timeout=120)
    open_ports = dict(line.split() for line in seen.stdout.splitlines())
    assert open_ports == {"8080": "True", "8081": "False", "8082": "False", "7070": "False", "7071": "False",
                          "8083": "False"}, seen.stderr


def docker_image_of(docker, container):
    return subprocess.run([docker, "inspect", "-f", "{{.Config.Image}}", container],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_the_front_door_stays_small_and_no_jvm_runs(docker, server, serve_engine):
    # `serve` (the front door and the engine's loop) never loads torch; only the workers do.
    if serve_engine != "python":
        pytest.skip("the torchserve engine runs a JVM by design")
    name, _ = server
    # this probe's own command line holds those words too: it leaves itself out
    script = ("import os, psutil\n"
              "for p in psutil.process_iter(['cmdline', 'memory_info']):\n"
              "    c = ' '.join(p.info['cmdline'] or [])\n"
              "    kind = 'serve' if c.endswith('bin/serve') else 'worker' if '-m serve.worker' in c else "
              "'java' if 'java' in c else None\n"
              "    if kind and p.pid != os.getpid():\n"
              "        print(kind, p.info['memory_info'].rss >> 20)\n")
    out = subprocess.run([docker, "exec", name, "python", "-c", script], capture_output=True, text=True)
    kinds = [line.split() for line in out.stdout.splitlines()]
    assert sorted(k for k, _ in kinds) == ["serve", "worker", "worker"], out.stdout + out.stderr
    assert all(int(mib) < 120 for k, mib in kinds if k == "serve"), kinds
