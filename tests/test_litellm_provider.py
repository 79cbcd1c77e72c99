"""A non-OpenAI provider prefix goes through the litellm library (imported only then)."""

from __future__ import annotations

from collections.abc import Callable

import openai

from tests.helpers import metric_value, metrics, sim_stats
from tests.procs import Proc

HI = [{"role": "user", "content": "hello there"}]


def test_litellm_provider_plain_and_stream(make_sim: Callable[..., Proc], make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--model", "sim-model")
    native = make_sim("--model", "native-model")
    gw = make_gateway({"model_list": [
        {"model_name": "cloud", "litellm_params": {"model": "mistral/sim-model", "api_base": f"{sim.url}/v1",
                                                    "api_key": "os.environ/CLOUD_KEY"},
         "model_info": {"id": "cloud-1", "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}},
        {"model_name": "local", "litellm_params": {"model": "openai/native-model", "api_base": f"{native.url}/v1"}},
    ]}, env={"CLOUD_KEY": "sk-cloud-secret"})
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="cloud", messages=HI, max_tokens=4)
    r = raw.parse()
    assert raw.headers["x-gateway-deployment"] == "cloud-1"
    assert r.choices[0].message.content is not None and len(r.choices[0].message.content.split()) == 4
    # litellm called the provider with the configured key
    assert sim_stats(sim)["last_headers"]["authorization"] == "Bearer sk-cloud-secret"
    chunks = list(c.chat.completions.create(model="cloud", messages=HI, max_tokens=3, stream=True))
    assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) == 3
    assert all(ch.usage is None for ch in chunks)  # not asked for: not shown
    text = metrics(gw)
    assert metric_value(text, "oss_completion_tokens_total", alias="cloud", estimated="false") == 7
    assert metric_value(text, "oss_requests_total", alias="cloud", status_class="2xx") == 2
    # the native deployment next to it is unaffected
    assert c.chat.completions.create(model="local", messages=HI, max_tokens=1).model == "native-model"
    assert "sk-cloud-secret" not in gw.log()


def test_litellm_provider_errors_map_to_openai_shape(make_sim: Callable[..., Proc],
                                                     make_gateway: Callable[..., Proc]) -> None:
    sim = make_sim("--fault", "500")
    gw = make_gateway({"model_list": [
        {"model_name": "cloud", "litellm_params": {"model": "mistral/sim-model", "api_base": f"{sim.url}/v1",
                                                    "api_key": "x"}}],
        "router_settings": {"num_retries": 0}})
    c = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    try:
        c.chat.completions.create(model="cloud", messages=HI, max_tokens=1)
    except openai.APIStatusError as exc:
        assert exc.status_code == 502
        assert "cloud" in str(exc.message)
    else:
        raise AssertionError("expected a 502")
