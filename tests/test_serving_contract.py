"""The course's handlers run through AWS's own handler chain: sagemaker-pytorch-inference's HandlerService (what
the PyTorch serving container's TorchServe workers call), with sagemaker-inference's Transformer inside it. The
context object stands in for TorchServe's: the model folder, the request's headers, and where the status goes."""

import json
import sys

import pytest
from tiny_models import tiny_classifier, tiny_generator


class RequestProcessor:
    def __init__(self, headers):
        self.headers = headers

    def get_request_properties(self):
        return self.headers


class TorchServeContext:
    """The attributes of TorchServe's `ts.context.Context` that the handler chain reads and writes."""

    def __init__(self, model_dir, content_type="application/json", accept="application/json"):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.request_processor = [RequestProcessor({"Content-Type": content_type, "Accept": accept})]
        self.status, self.content_types = None, {}

    def set_response_status(self, code, phrase):
        self.status = (int(code), phrase)

    def set_response_content_type(self, index, content_type):
        self.content_types[index] = content_type


@pytest.fixture(scope="module", params=["text-generation", "text-classification"])
def handler_service(request):
    """A started HandlerService for a tiny model folder, with code/ importable as the container makes it."""
    folder = tiny_generator() if request.param == "text-generation" else tiny_classifier()
    sys.path.insert(0, str(folder / "code"))
    sys.modules.pop("inference", None)  # the other task's folder may have been imported
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    service = HandlerService()
    service.initialize(TorchServeContext(folder))
    yield service, folder, request.param
    sys.modules.pop("inference", None)
    sys.path.remove(str(folder / "code"))


def invoke(service, folder, body, **headers):
    context = TorchServeContext(folder, **headers)
    return service.handle([{"body": body}], context), context


def test_handlers_serve_through_the_aws_handler_chain(handler_service):
    service, folder, task = handler_service
    body = {"inputs": "Now is the winter of our discontent"}
    if task == "text-generation":
        body["parameters"] = {"max_new_tokens": 3}
    (answer,), context = invoke(service, folder, json.dumps(body).encode())
    assert context.status is None and context.content_types == {0: "application/json"}
    generation = {"generated_text", "generated_tokens", "finish_reason"}
    expected = generation if task == "text-generation" else {"label", "scores"}
    assert set(json.loads(answer)) == expected


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"inputs": ', "application/json", 400),
        (b"Hello", "text/plain", 415),
        (b'{"inputs": ""}', "application/json", 400),
        (b'{"inputs": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}', "application/json", 422),
    ],
)
def test_bad_requests_keep_their_4xx_in_the_aws_chain(handler_service, body, content_type, status):
    service, folder, _ = handler_service
    (message,), context = invoke(service, folder, body, content_type=content_type)
    assert context.status[0] == status and context.status[1] in message


def test_invalid_utf8_is_a_500_in_the_aws_chain_but_a_400_on_the_course_server(handler_service):
    """sagemaker-inference decodes JSON bodies before input_fn sees them, and a UnicodeDecodeError there is not a
    BaseInferenceToolkitError, so the toolkit answers 500; the course server hands input_fn the bytes (400)."""
    service, folder, _ = handler_service
    (message,), context = invoke(service, folder, b'{"inputs": "\xff"}')
    assert context.status[0] == 500 and "utf-8" in message
