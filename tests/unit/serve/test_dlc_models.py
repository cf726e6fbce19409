"""Drop-in for a model.tar.gz made for the AWS PyTorch DLC (sagemaker-pytorch-inference's
rules): the default model_fn loads a TorchScript model.pt or the one *.pt / *.pth; the
default predict_fn runs the model in eval mode; errors name what was found and the
SAGEMAKER_PROGRAM set; a torch.compile failure is the server's fault, never a 400."""
import io
import json
import logging
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from support.serving import npy, run_batch, service_for

# The transform_fn-only script of AWS's default-inference test, in our own words: an
# application/octet-stream photo in, 1,000 probabilities out, the model from the default model_fn.
TRANSFORM_ONLY = '''
import io, json
import numpy as np, torch, torchvision.transforms as T
from PIL import Image

def transform_fn(model, payload, request_content_type, response_content_type):
    if request_content_type and request_content_type != "application/octet-stream":
        raise RuntimeError("send application/octet-stream, not " + request_content_type)
    x = T.Compose([T.Resize(72), T.CenterCrop(64), T.ToTensor()])(Image.open(io.BytesIO(payload)).convert("RGB"))
    logits = model.forward(x.unsqueeze(0)).squeeze(0).detach().numpy()
    e = np.exp(logits - logits.max())
    return json.dumps((e / e.sum()).tolist()), "application/json"
'''


def write(model_dir, name, source):
    code = model_dir / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / name).write_text(textwrap.dedent(source))


@pytest.fixture
def traced_resnet18():
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()   # 1,000 classes, as the AWS test model
    return torch.jit.trace(net, torch.randn(1, 3, 64, 64))


@pytest.fixture
def program(monkeypatch):
    """SAGEMAKER_PROGRAM as SDK v2's PyTorchModel(entry_point="resnet18.py") sets it."""
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "resnet18.py")
    return "resnet18.py"


@pytest.mark.parametrize("filename", ["model.pt", "traced_resnet18.pt", "weights.pth"])
def test_a_torchscript_file_with_only_transform_fn_is_served(tmp_path, traced_resnet18, program, jpeg_bytes,
                                                              filename):
    model_dir = tmp_path / "model"
    write(model_dir, program, TRANSFORM_ONLY)
    torch.jit.save(traced_resnet18, str(model_dir / filename))
    service = service_for(model_dir)
    (code, ctype, body), = run_batch(service, model_dir, [(jpeg_bytes, {"Content-Type": "application/octet-stream"})])
    assert code == 200 and ctype == "application/json"
    probs = json.loads(body)
    assert len(probs) == 1000 and abs(sum(probs) - 1) < 1e-4


def test_several_model_files_and_no_model_pt_is_a_reason_naming_them(tmp_path, traced_resnet18, program):
    model_dir = tmp_path / "model"
    write(model_dir, program, TRANSFORM_ONLY)
    for name in ("a.pt", "b.pth"):
        torch.jit.save(traced_resnet18, str(model_dir / name))
    with pytest.raises(ValueError, match=r"several model files .*a\.pt, b\.pth"):
        service_for(model_dir)


def test_a_state_dict_without_model_json_names_what_it_is_and_the_program(tmp_path, program):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    torch.save(torchvision.models.resnet18().state_dict(), model_dir / "model.pt")
    with pytest.raises(ValueError) as failed:
        service_for(model_dir)
    message = str(failed.value)
    assert "model.pt is a state_dict (122 tensors" in message
    assert "code/resnet18.py (SAGEMAKER_PROGRAM)" in message and "model.json" in message


def test_an_empty_model_directory_names_the_program_and_says_it_is_empty(tmp_path, program):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no code/resnet18\.py \(SAGEMAKER_PROGRAM\).*it is empty"):
        service_for(model_dir)


class Mnistish(torch.nn.Module):
    """The workshop MNIST net's shape: dropout that a model left in training mode keeps on."""

    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 10)

    def forward(self, x):
        return torch.log_softmax(self.fc2(self.drop(torch.relu(self.fc1(x)))), dim=1)


TRAIN_MODE_MODEL_FN = '''
import torch

class Mnistish(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = torch.nn.Linear(16, 64), torch.nn.Dropout(0.5), torch.nn.Linear(64, 10)

    def forward(self, x):
        return torch.log_softmax(self.fc2(self.drop(torch.relu(self.fc1(x)))), dim=1)

def model_fn(model_dir):
    torch.manual_seed(0)
    return Mnistish()          # as AWS's mnist scripts: no eval(), so still in training mode
'''


def test_the_default_predict_fn_runs_a_train_mode_model_in_eval_mode(tmp_path, caplog):
    model_dir = tmp_path / "model"
    write(model_dir, "inference.py", TRAIN_MODE_MODEL_FN)
    with caplog.at_level(logging.WARNING, logger="serve.handler"):
        service = service_for(model_dir)
    assert caplog.text.count("training mode") == 1 and "default predict_fn puts it in eval mode" in caplog.text
    x = np.random.default_rng(0).random((1, 16), dtype=np.float32)
    answers = [json.loads(run_batch(service, model_dir, [(npy(x), {"Content-Type": "application/x-npy"})])[0][2])
               for _ in range(4)]
    # dropout off: the same input, the same answer (within the frozen graph's rounding)
    assert all(np.allclose(a, answers[0], atol=1e-5) for a in answers)
    torch.manual_seed(0)
    want = Mnistish().eval()(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(answers[0], want, atol=1e-5)


def test_a_users_predict_fn_is_warned_that_it_runs_a_train_mode_model_as_it_is(tmp_path, caplog):
    model_dir = tmp_path / "model"
    write(model_dir, "inference.py", TRAIN_MODE_MODEL_FN + '''
def predict_fn(data, model):
    return model(data)
''')
    with caplog.at_level(logging.WARNING, logger="serve.handler"):
        service_for(model_dir)
    assert "your predict_fn/transform_fn runs it as it is" in caplog.text


def test_json_and_csv_numbers_reach_the_default_predict_fn_as_float32(tmp_path):
    model_dir = tmp_path / "model"
    write(model_dir, "inference.py", TRAIN_MODE_MODEL_FN)
    service = service_for(model_dir)
    ints = json.dumps([list(range(16))]).encode()
    csv = ",".join(str(i) for i in range(16)).encode()
    got = run_batch(service, model_dir, [(ints, {"Content-Type": "application/json"}),
                                         (csv, {"Content-Type": "text/csv"})])
    assert [code for code, _, _ in got] == [200, 200]
    assert np.allclose(json.loads(got[0][2]), json.loads(got[1][2]))


@pytest.mark.slow
def test_a_model_that_fails_to_compile_is_a_server_error_not_a_bad_request(tmp_path, monkeypatch):
    """torch.compile with no working C++ compiler (inductor's cxx points nowhere): 500, with the reason."""
    model_dir = tmp_path / "model"
    write(model_dir, "inference.py", '''
import torch

def model_fn(model_dir):
    torch.manual_seed(0)
    return torch.compile(torch.nn.Linear(4, 2).eval())
''')
    from torch._inductor import config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/nonexistent/g++"))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)   # a kernel cached by another run needs no compiler
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    service = service_for(model_dir)
    (code, _, body), = run_batch(service, model_dir, [(npy(np.ones((1, 4), np.float32)),
                                                       {"Content-Type": "application/x-npy"})])
    assert code == 500, body
    assert "failed to compile" in json.loads(body)["message"]


def test_a_photo_decoded_by_user_code_keeps_the_pixel_guard(tmp_path, traced_resnet18, program):
    """The DLC-style transform_fn opens images with PIL itself: the workers' pixel limit holds there too."""
    model_dir = tmp_path / "model"
    write(model_dir, program, TRANSFORM_ONLY)
    torch.jit.save(traced_resnet18, str(model_dir / "model.pt"))
    service = service_for(model_dir)
    buf = io.BytesIO()
    Image.new("RGB", (9000, 9000)).save(buf, "PNG")
    (code, _, _), = run_batch(service, model_dir, [(buf.getvalue(), {"Content-Type": "application/octet-stream"})])
    assert code == 413


LINEAR_MODEL_FN = '''
import torch

def model_fn(model_dir):
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).eval()
'''


def test_jsonlines_records_are_answered_one_line_each_in_order(tmp_path):
    """Batch Transform (SplitType Line, MultiRecord, AssembleWith Line): a body of JSON lines
    gets one answer line per record, in order, with no Accept given."""
    model_dir = tmp_path / "model"
    write(model_dir, "inference.py", LINEAR_MODEL_FN)
    service = service_for(model_dir)
    records = np.random.default_rng(0).random((2000, 3)).round(4)
    body = "".join(json.dumps(r.tolist()) + "\n" for r in records).encode()
    (code, ctype, out), = run_batch(service, model_dir, [(body, {"Content-Type": "application/jsonlines"})])
    assert code == 200 and ctype == "application/jsonlines"
    lines = out.decode().splitlines()
    torch.manual_seed(0)
    want = torch.nn.Linear(3, 2)(torch.tensor(records, dtype=torch.float32)).detach().numpy()
    assert len(lines) == 2000 and np.allclose([json.loads(line) for line in lines], want, atol=1e-5)
    (code, _, out), = run_batch(service, model_dir, [(b"[1, 2, 3]\n[4, 5]\n", {"Content-Type": "application/jsonlines"})])
    assert code == 400 and "same shape" in json.loads(out)["message"]
