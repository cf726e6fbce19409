import io
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve import handler as handler_mod
from serve.handler import HandlerService
from support.serving import CLASSES, USER_MODEL_FN, make_context, npy, run_batch, service_for


def write_code(model_dir, source: str, name="inference.py"):
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    (code / name).write_text(textwrap.dedent(source))


@pytest.fixture
def classifier(model_dir):
    return service_for(model_dir)


def test_default_handler_is_chosen_from_model_json(classifier):
    assert set(classifier.fns.origin.values()) == {"handlers.image_classifier"}
    assert classifier.fns.batched


def test_mixed_batch_good_ones_succeed_bad_ones_fail_alone(classifier, model_dir, jpeg_bytes, png_bytes):
    pixels = np.random.default_rng(0).integers(0, 255, (1, 3, 64, 64), dtype=np.uint8)
    requests = [
        (jpeg_bytes, {"Content-Type": "image/jpeg"}),
        (jpeg_bytes[:300], {"Content-Type": "image/jpeg"}),  # truncated
        (png_bytes, {"content-type": "image/png", "Accept": "text/csv"}),
        (b"hello", {"Content-Type": "text/plain"}),  # unsupported
        (npy(pixels), {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}),
        (b"[[1, NaN]]", {"Content-Type": "application/json"}),
        (jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "image/png"}),  # unacceptable
        (b"", {"Content-Type": "image/jpeg"}),
        (npy(np.zeros((2, 5, 5))), {"Content-Type": "application/x-npy"}),  # wrong shape
    ]
    res = run_batch(classifier, model_dir, requests)
    codes = [r[0] for r in res]
    assert codes == [200, 400, 200, 415, 200, 400, 406, 400, 400]

    top = json.loads(res[0][2])["predictions"]
    assert len(top) == 3 and {p["label"] for p in top} == set(CLASSES)
    assert abs(sum(p["probability"] for p in top) - 1) < 1e-3
    assert res[0][1] == "application/json"

    assert res[2][1] == "text/csv"
    assert len(res[2][2].decode().strip().split(",")) == 3

    probs = np.load(io.BytesIO(res[4][2]))
    assert probs.shape == (1, 3)

    for code, ctype, body in res:
        if code >= 400:
            err = json.loads(body)
            assert ctype == "application/json" and err["code"] == code and err["message"]
            assert "Traceback" not in body.decode() and "/" not in err["message"].replace("image/", "").replace("application/", "").replace("text/", "")


def test_same_image_same_answer_alone_or_in_a_batch(classifier, model_dir, jpeg_bytes):
    alone = run_batch(classifier, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg"})])[0][2]
    batch = run_batch(classifier, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg"})] * 3)
    for _, _, body in batch:
        a, b = json.loads(alone)["predictions"], json.loads(body)["predictions"]
        assert [p["index"] for p in a] == [p["index"] for p in b]
        assert all(abs(x["probability"] - y["probability"]) < 1e-4 for x, y in zip(a, b))


def test_json_batch_of_images_gives_one_list_per_image(classifier, model_dir):
    arr = np.random.default_rng(1).random((2, 64, 64, 3)).tolist()  # NHWC floats in [0, 1]
    (code, _, body), = run_batch(classifier, model_dir, [(json.dumps(arr).encode(), {"Content-Type": "application/json"})])
    assert code == 200
    preds = json.loads(body)["predictions"]
    assert len(preds) == 2 and len(preds[0]) == 3


def test_user_module_with_only_model_fn(model_dir, jpeg_bytes):
    write_code(model_dir, USER_MODEL_FN)
    s = service_for(model_dir)
    assert s.fns.origin["model_fn"] == "inference.py"
    assert s.fns.origin["input_fn"] == "handlers.image_classifier"
    (code, _, body), = run_batch(s, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg"})])
    assert code == 200 and len(json.loads(body)["predictions"]) == 3


WORKSHOP = '''
import json, os, torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
    def forward(self, x):
        return self.fc(x)

def model_fn(model_dir):
    torch.manual_seed(0)
    return Net().eval()

def input_fn(body, content_type):
    if content_type != "application/json":
        raise ValueError("unsupported content type " + content_type + " see /opt/ml/code/x.py")
    return torch.tensor(json.loads(body), dtype=torch.float32)

def predict_fn(data, model):
    CALLS.append(len(data))
    if data.shape[-1] == 5:
        raise RuntimeError("boom in /secret/path")
    return model(data)

CALLS = []
'''


def test_workshop_script_no_model_json(tmp_path):
    """A CIFAR-style inference.py (model_fn/input_fn/predict_fn, no output_fn,
    no model.json): unchanged, one request at a time, defaults for output."""
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    write_code(model_dir, WORKSHOP)
    s = service_for(model_dir)
    assert s.fns.origin["output_fn"] == "handlers.tensor" and not s.fns.batched
    res = run_batch(
        s,
        model_dir,
        [
            (b"[[1, 2, 3, 4]]", {"Content-Type": "application/json"}),
            (b"[[1, 2, 3, 4]]", {"Content-Type": "text/csv"}),  # input_fn raises -> 400
            (b"[[1, 2, 3, 4, 5]]", {"Content-Type": "application/json"}),  # predict_fn raises -> 500 (its own error)
            (b"[[1, 2, 3, 4]]", {"Content-Type": "application/json", "Accept": "application/x-npy"}),
        ],
    )
    assert [r[0] for r in res] == [200, 400, 500, 200]
    assert np.array(json.loads(res[0][2])).shape == (1, 2)
    bad_input = json.loads(res[1][2])["message"]
    assert "unsupported content type" in bad_input and "/opt/ml" not in bad_input
    assert json.loads(res[2][2]) == {
        "error": "Internal Server Error", "code": 500, "message": "prediction failed (RuntimeError)",
    }
    assert np.load(io.BytesIO(res[3][2])).shape == (1, 2)


def test_batched_user_predict_fn_is_called_once_per_batch(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    write_code(model_dir, WORKSHOP.replace("def predict_fn", "from serve.user_module import batched\n@batched\ndef predict_fn").replace(
        "    if data.shape[-1] == 5:", "    data = torch.cat(data)\n    if data.shape[-1] == 5:").replace(
        "    return model(data)", "    return list(model(data).split(1))"))
    s = service_for(model_dir)
    import inference

    inference.CALLS.clear()
    res = run_batch(s, model_dir, [(b"[[1, 2, 3, 4]]", {"Content-Type": "application/json"})] * 4 + [(b"x", {"Content-Type": "application/json"})])
    assert [r[0] for r in res] == [200, 200, 200, 200, 400]
    assert inference.CALLS == [4]


def test_transform_fn_and_model_fn_with_context(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    write_code(model_dir, '''
        SEEN = {}
        def model_fn(model_dir, context):
            SEEN["gpu"] = context.system_properties["gpu_id"]
            return "the-model"
        def transform_fn(model, body, content_type, accept):
            if body == b"bad":
                raise KeyError("x")
            return body.upper(), "text/plain"
    ''')
    s = service_for(model_dir)
    res = run_batch(s, model_dir, [(b"abc", {"Content-Type": "text/plain"}), (b"bad", {})])
    assert res[0] == (200, "text/plain", b"ABC")
    assert res[1][0] == 500 and b"transform_fn failed (KeyError)" in res[1][2]


def test_sagemaker_program_selects_the_file(tmp_path, monkeypatch):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    write_code(model_dir, "def model_fn(d):\n    return 'other'\n", name="other.py")
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "other.py")
    assert service_for(model_dir).model == "other"


def test_load_failure_is_reported_to_the_torchserve_engine(tmp_path, monkeypatch):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    write_code(model_dir, "def model_fn(d):\n    raise RuntimeError('weights are corrupt')\n")
    status = tmp_path / "status"
    status.mkdir()
    monkeypatch.setenv("BYOC_SERVE_STATUS_DIR", str(status))
    from serve.torchserve import entry

    monkeypatch.setattr(entry, "_service", None)
    with pytest.raises(RuntimeError):
        entry.handle(None, make_context(model_dir, [{}]))
    (marker,) = status.glob("load-failed-*.json")
    assert json.loads(marker.read_text())["message"] == "weights are corrupt"


def test_no_model_at_all_fails_to_load(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model to load"):
        service_for(tmp_path)


def test_the_torchserve_entry_answers_a_batch_in_its_context(classifier, model_dir, jpeg_bytes):
    from support.serving import run_batch_torchserve

    got = run_batch_torchserve(classifier, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg"}),
                                                       (b"x", {"Content-Type": "text/html"})])
    assert [(code, ctype) for code, ctype, _ in got] == [(200, "application/json"), (415, "application/json")]
    assert len(json.loads(got[0][2])["predictions"]) == 3 and json.loads(got[1][2])["code"] == 415


# ---------------------------------------------------------------- per-request top-k
def test_topk_from_accept_parameter_and_custom_attributes_per_request(classifier, model_dir, jpeg_bytes):
    jpeg = {"Content-Type": "image/jpeg"}
    res = run_batch(classifier, model_dir, [
        (jpeg_bytes, jpeg),                                                       # BYOC_TOPK default: all 3
        (jpeg_bytes, {**jpeg, "Accept": "application/json; topk=1"}),
        (jpeg_bytes, {**jpeg, "X-Amzn-SageMaker-Custom-Attributes": "topk=2"}),
        (jpeg_bytes, {**jpeg, "Accept": "application/json;topk=1",
                      "X-Amzn-SageMaker-Custom-Attributes": "topk=2"}),          # Accept wins
        (jpeg_bytes, {**jpeg, "Accept": "application/json; topk=99"}),           # clipped to the classes
        (jpeg_bytes, {**jpeg, "Accept": "application/json; topk=zero"}),
        (jpeg_bytes, {**jpeg, "Accept": "application/json; topk=0"}),
    ])
    assert [r[0] for r in res] == [200, 200, 200, 200, 200, 400, 400]
    lengths = [len(json.loads(body)["predictions"]) for _, _, body in res[:5]]
    assert lengths == [3, 1, 2, 1, 3]
    best = json.loads(res[0][2])["predictions"][0]
    assert json.loads(res[1][2])["predictions"] == [best]       # the same top class, alone
    assert res[1][1] == "application/json"                      # parameters stay out of the type
    assert "topk" in json.loads(res[5][2])["message"]


def test_user_output_fn_sees_the_plain_media_type(model_dir, jpeg_bytes):
    write_code(model_dir, """
        def output_fn(prediction, accept):
            assert accept == "application/json", accept
            return '{"ok": true}', accept
    """)
    service = service_for(model_dir)
    (code, ctype, body), = run_batch(service, model_dir, [
        (jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "application/json; topk=2"})])
    assert (code, ctype, json.loads(body)) == (200, "application/json", {"ok": True})


def test_bool_array_is_not_an_image(classifier, model_dir):
    (code, _, body), = run_batch(classifier, model_dir, [
        (npy(np.ones((3, 64, 64), bool)), {"Content-Type": "application/x-npy"})])
    assert code == 400 and "bool" in json.loads(body)["message"]


@pytest.mark.parametrize("gpu_id", [0, 1, 3])
def test_each_worker_makes_cuda_mean_its_own_gpu(tmp_path, monkeypatch, gpu_id):
    # No GPU here: torch.cuda is faked up to the call that picks the device, so that a
    # model_fn saying torch.device("cuda") lands on TorchServe's gpu_id for this worker.
    import torch

    picked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    write_code(model_dir, "def model_fn(d, context):\n    return context.system_properties['gpu_id']\n")
    from serve.worker import WorkerContext

    for context in (make_context(model_dir, [{}], gpu=gpu_id), WorkerContext(str(model_dir), "model", gpu_id, 1)):
        picked.clear()
        s = HandlerService()
        s.initialize(context)
        assert picked == [gpu_id] and s.model == gpu_id


# ---------------------------------------------------------------- a workshop's inference.py
# The workshop-style inference.py the container fuzz test serves (64 px, 3 classes,
# PIL + torchvision transforms, JSON arrays as tensors, an output_fn that does JSON only).
WORKSHOP_IMAGES = (Path(__file__).resolve().parents[2] / "container" / "workshop" / "resnet_serving"
                   / "inference.py").read_text()


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF header rewritten to claim width x height."""
    sof = next(i for i in range(len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    return jpeg[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[sof + 9:]


@pytest.fixture
def workshop(model_dir):
    write_code(model_dir, WORKSHOP_IMAGES)
    return service_for(model_dir)


@pytest.mark.parametrize("accept", ["text/csv", "application/xml", "image/png", "text/html",
                                    "application/x-npy", "application/jsonx", "application/json;q=0"])
def test_an_accept_output_fn_does_not_produce_is_406(workshop, model_dir, jpeg_bytes, accept):
    [(code, ctype, body)] = run_batch(workshop, model_dir,
                                      [(jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": accept})])
    reason = json.loads(body)
    assert (code, ctype, reason["code"]) == (406, "application/json", 406), body
    if accept != "application/json;q=0":
        assert f"tried: {accept}" in reason["message"]


@pytest.mark.parametrize("accept", ["text/html, application/json;q=0.9", "text/csv;q=0.5, */*;q=0.1",
                                    "application/*", "*/*", ""])
def test_the_clients_types_are_tried_in_its_order(workshop, model_dir, jpeg_bytes, accept):
    [(code, ctype, body)] = run_batch(workshop, model_dir,
                                      [(jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": accept})])
    assert (code, ctype) == (200, "application/json") and len(json.loads(body)) == 3


def test_the_first_type_output_fn_produces_wins(model_dir, jpeg_bytes):
    write_code(model_dir, WORKSHOP_IMAGES.replace('''    if accept != "application/json":''', '''    if accept == "text/csv":
        return ",".join(map(str, prediction[0].tolist())), accept
    if accept != "application/json":'''))
    s = service_for(model_dir)
    res = run_batch(s, model_dir, [
        (jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "image/png, text/csv;q=0.8, application/json;q=0.9"}),
        (jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "image/png, text/csv;q=0.8"}),
    ])
    assert [(code, ctype) for code, ctype, _ in res] == [(200, "application/json"), (200, "text/csv")]


def test_an_output_fn_broken_for_json_too_is_500(model_dir, jpeg_bytes):
    write_code(model_dir, WORKSHOP_IMAGES + "\ndef output_fn(prediction, accept):\n    raise KeyError(accept)\n")
    s = service_for(model_dir)
    res = run_batch(s, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": "text/csv"}),
                                   (jpeg_bytes, {"Content-Type": "image/jpeg"})])
    assert [code for code, _, _ in res] == [500, 500]
    assert json.loads(res[0][2])["message"] == "output_fn failed (KeyError)"


def test_bool_array_the_model_rejects_is_400(workshop, model_dir, jpeg_bytes):
    """The rule: torch refusing what the user's input_fn made of the request
    (a wrong dtype or shape, raised inside torch) is the request's fault."""
    bools = json.dumps(np.ones((1, 3, 64, 64), dtype=bool).tolist()).encode()
    res = run_batch(workshop, model_dir, [
        (bools, {"Content-Type": "application/json"}),
        (b"[[1.0, 2.0]]", {"Content-Type": "application/json"}),
        (jpeg_bytes, {"Content-Type": "image/jpeg"}),
    ])
    assert [code for code, _, _ in res] == [400, 400, 200]
    reason = json.loads(res[0][2])["message"]
    assert reason.startswith("the model rejected the input:") and "/" not in reason.split(":", 1)[1][:3]


@pytest.mark.parametrize("size", [(12000, 12000), (8000, 8000)])  # over 2x the limit (PIL's error); over 1x (its warning)
def test_decompression_bomb_inside_user_code_is_413(workshop, model_dir, jpeg_bytes, size):
    bomb = jpeg_claiming(jpeg_bytes, *size)
    res = run_batch(workshop, model_dir, [(bomb, {"Content-Type": "image/jpeg"}),
                                          (jpeg_bytes, {"Content-Type": "image/jpeg"})])
    assert [code for code, _, _ in res] == [413, 200]
    assert "BYOC_MAX_IMAGE_PIXELS" in json.loads(res[0][2])["message"]


def test_user_code_pixel_limit_follows_the_setting(model_dir, jpeg_bytes, monkeypatch):
    monkeypatch.setenv("BYOC_MAX_IMAGE_PIXELS", "10000")
    write_code(model_dir, WORKSHOP_IMAGES)
    s = service_for(model_dir)
    [(code, _, _)] = run_batch(s, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg"})])
    assert code == 413  # the 512x512 photo is over 10,000 pixels


def test_threads_adapt_to_the_workers_busy_under_torchserve(model_dir, jpeg_bytes, tmp_path, monkeypatch):
    """Alone a worker uses every core; with another worker busy, its share (the torchserve
    engine's workers count each other's busy markers; the python engine's front door knows)."""
    from support.serving import run_batch_torchserve as run_batch

    import torch

    status = tmp_path / "status"
    status.mkdir()
    monkeypatch.setenv("BYOC_SERVE_STATUS_DIR", str(status))
    monkeypatch.setenv("BYOC_WORKER_CPUS", "2")
    monkeypatch.setenv("BYOC_WORKER_THREADS", "0")
    before = torch.get_num_threads()
    try:
        write_code(model_dir, WORKSHOP_IMAGES)
        s = service_for(model_dir)
        run_batch(s, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg"})])
        assert s.threads == torch.get_num_threads() == 2
        (status / "busy-999999").touch()  # another worker mid-batch
        run_batch(s, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg"})])
        assert s.threads == torch.get_num_threads() == 1
        assert sorted(p.name for p in status.iterdir()) == ["busy-999999"]  # ours is gone
    finally:
        torch.set_num_threads(before)


def test_a_batch_of_user_predict_fn_calls_runs_its_model_calls_together(model_dir, jpeg_bytes, monkeypatch):
    """Default settings (BYOC_OPTIMIZE_MODEL on): the workshop predict_fn is still
    called once per request, each with its own input; the model runs the batch's
    images in one forward, with the same answers as the model served untouched,
    and a request the model rejects still fails alone."""
    from serve import config, optimize

    write_code(model_dir, WORKSHOP_IMAGES)
    monkeypatch.setattr(optimize, "_time", lambda fns, x: {k: 1.0 if k == "freeze" else 2.0 for k in fns})
    monkeypatch.setenv("BYOC_OPTIMIZE_MODEL", "false")
    config.worker_settings.cache_clear()
    plain = service_for(model_dir)
    monkeypatch.delenv("BYOC_OPTIMIZE_MODEL")
    config.worker_settings.cache_clear()
    served = service_for(model_dir)
    photo = {"Content-Type": "image/jpeg"}
    run_batch(served, model_dir, [(jpeg_bytes, photo)])  # answered by the model; proven after the reply
    served.after_reply()
    assert served.forward.frozen is not None
    batches = []
    graph = served.forward.frozen
    served.forward.frozen = lambda x: batches.append(x.shape[0]) or graph(x)
    flipped = np.asarray(Image.open(io.BytesIO(jpeg_bytes)))[:, ::-1]
    buf = io.BytesIO()
    Image.fromarray(flipped).save(buf, "JPEG")
    requests = [(jpeg_bytes, photo), (buf.getvalue(), photo), (b"[[1.0, 2.0]]", {"Content-Type": "application/json"}),
                (jpeg_bytes, photo)]
    want = run_batch(plain, model_dir, requests)
    for _ in range(2):   # the first time one at a time (proven after the reply); then merged
        got = run_batch(served, model_dir, requests)
        assert [code for code, _, _ in got] == [code for code, _, _ in want] == [200, 200, 400, 200]
        for (_, _, g), (_, _, w) in zip(got, want):
            g, w = json.loads(g), json.loads(w)
            if isinstance(w, dict) and "message" in w:
                assert g == w
            else:
                assert [p["class"] for p in g] == [p["class"] for p in w]
                assert np.allclose([p["probability"] for p in g], [p["probability"] for p in w], atol=1e-4)
    batches.clear()
    run_batch(served, model_dir, requests)
    assert batches == [3]   # the three photos' model calls: one forward


def test_jsonlines_images_get_one_top_k_line_each(classifier, model_dir):
    images = np.random.default_rng(2).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    body = "".join(json.dumps(img.tolist()) + "\n" for img in images).encode()
    (code, ctype, out), = run_batch(classifier, model_dir, [(body, {"Content-Type": "application/jsonlines"})])
    assert code == 200 and ctype == "application/jsonlines"
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert len(lines) == 3 and all(len(line["predictions"]) == 3 for line in lines)
    for img, line in zip(images, lines):   # each line is that image's own answer
        (_, _, alone), = run_batch(classifier, model_dir, [(npy(img[None]), {"Content-Type": "application/x-npy"})])
        want = {p["label"]: p["probability"] for p in json.loads(alone)["predictions"]}
        got = {p["label"]: p["probability"] for p in line["predictions"]}
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-4 for k in want)


# ---------------------------------------------------------------- a review's findings (2026-12-07)
def scripted_linear(model_dir):
    """A TorchScript model.pt (the AWS DLC's usual artifact), served by the tensor handler."""
    import torch
    torch.manual_seed(0)
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 2))).save(str(model_dir / "model.pt"))
    return model_dir


def test_a_torchscript_models_refusal_gives_its_reason_not_its_traceback(tmp_path):
    model_dir = scripted_linear(tmp_path)
    s = service_for(model_dir)
    (code, _, body), = run_batch(s, model_dir, [(b"[[1, 2, 3]]", {"Content-Type": "application/json"})])
    message = json.loads(body)["message"]
    assert code == 400 and "mat1 and mat2 shapes cannot be multiplied" in message
    assert "Traceback" not in message and "code/__torch__" not in message


def test_a_shape_error_from_a_torch_op_in_the_users_forward_is_400_and_their_own_raise_500(tmp_path):
    write_code(tmp_path, """
        import json, torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.randn(4, 2))
            def forward(self, x):
                if x.shape[-1] == 5:
                    raise RuntimeError("shapes of 5 columns are not supported: my own rule")
                return x @ self.w
        def model_fn(model_dir):
            return Net().eval()
        def input_fn(body, content_type):
            return torch.tensor(json.loads(body), dtype=torch.float32)
        def output_fn(prediction, accept):
            return json.dumps(prediction.tolist())
    """)
    s = service_for(tmp_path)
    res = run_batch(s, tmp_path, [(b"[[1, 2, 3]]", {"Content-Type": "application/json"}),
                                  (b"[[1, 2, 3, 4, 5]]", {"Content-Type": "application/json"}),
                                  (b"[[1, 2, 3, 4]]", {"Content-Type": "application/json"})])
    assert [code for code, _, _ in res] == [400, 500, 200]
    assert "shapes cannot be multiplied" in json.loads(res[0][2])["message"]


JSON_ONLY_OUTPUT = """
    import json, torch
    def model_fn(model_dir):
        torch.manual_seed(0)
        return torch.nn.Linear(4, 2).eval()
    def input_fn(body, content_type):
        return torch.tensor([json.loads(line) for line in body.decode().splitlines()], dtype=torch.float32)
    def output_fn(prediction, accept):
        if accept == "application/json":
            return json.dumps(prediction.tolist())
        raise ValueError("unsupported accept " + accept)
"""


@pytest.mark.parametrize("accept", [None, "*/*"])
def test_a_json_lines_request_to_an_output_fn_for_json_alone_gets_json(tmp_path, accept):
    """SageMaker's toolkit asks output_fn for JSON when the client names no type; our
    default for JSON lines is JSON lines, which such an output_fn refuses: JSON then."""
    write_code(tmp_path, JSON_ONLY_OUTPUT)
    s = service_for(tmp_path)
    headers = {"Content-Type": "application/jsonlines", **({"Accept": accept} if accept else {})}
    (code, ctype, body), = run_batch(s, tmp_path, [(b"[1, 2, 3, 4]\n[4, 3, 2, 1]", headers)])
    assert code == 200 and ctype == "application/json" and np.array(json.loads(body)).shape == (2, 2)


def test_an_unacceptable_types_406_message_stays_short(workshop, model_dir, jpeg_bytes):
    accept = ", ".join(f"text/x-{i}" for i in range(5000))
    (code, _, body), = run_batch(workshop, model_dir, [(jpeg_bytes, {"Content-Type": "image/jpeg", "Accept": accept})])
    assert code == 406 and len(body) < 1000


def test_sagemaker_default_invocations_accept_chooses_what_no_accept_gets(tmp_path, monkeypatch):
    """As SageMaker's toolkit: an output_fn that makes NPY alone answers a client that names
    no type when SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT says so."""
    from serve import config
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/x-npy")
    config.worker_settings.cache_clear()
    try:
        write_code(tmp_path, JSON_ONLY_OUTPUT.replace('''        if accept == "application/json":
            return json.dumps(prediction.tolist())''', '''        if accept == "application/x-npy":
            import io, numpy
            buf = io.BytesIO()
            numpy.save(buf, prediction.numpy())
            return buf.getvalue()'''))
        s = service_for(tmp_path)
        res = run_batch(s, tmp_path, [(b"[1, 2, 3, 4]", {"Content-Type": "application/jsonlines"}),
                                      (b"[1, 2, 3, 4]", {"Content-Type": "application/jsonlines", "Accept": "*/*"})])
        assert [(code, ctype) for code, ctype, _ in res] == [(200, "application/x-npy")] * 2
        assert np.load(io.BytesIO(res[0][2])).shape == (1, 2)
    finally:
        monkeypatch.delenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT")
        config.worker_settings.cache_clear()
