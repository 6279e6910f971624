"""`ttscale serve`: an OpenAI-compatible endpoint that runs a test-time strategy, or the fitted
allocation policy, on every request.

One backend (one engine) serves all requests, so concurrent requests batch in the engine.
Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics (Prometheus text).

What runs is chosen per request; the first source that names a strategy, a budget or the policy
decides, and options from sources above it (or from sources that name the same strategy) apply:
  1. the body's `ttscale` object (the openai client's `extra_body={"ttscale": {...}}`);
  2. the headers X-TTS-Budget-Flops, X-TTS-Budget-Samples, X-TTS-Strategy;
  3. a model-name prefix: `best-of-n-8/MODEL` (strategy, then -N), `beam-search/MODEL`, `policy/MODEL`;
  4. the server's default (`ttscale serve --strategy ... --n ...`).
A budget runs the policy (`--policy`): it probes the prompt where probing pays, predicts its
difficulty bin, and runs the setting it chose (ttscale.allocation.policy, whose rules on gold
answers hold here: a gold-guided setting is never chosen, and no request may name a verifier or
rule that reads gold answers, since a request has none).

What a request cost is read from `Trace.cost`, which the CostMeters filled in (the one road a
problem's cost travels): `usage` counts every prompt, generated and cached token the strategy
spent, the probe's and the verifier's included (`usage.verifier_tokens`, also in total_tokens),
and the response's `ttscale` block gives FLOPs, eFLOPs, verifier calls and tokens, engine calls,
the setting, and the bin and budget where the policy chose.

The package follows vLLM's seams (vllm/entrypoints/openai: protocol.py, serving_*.py, api_server.py),
each module one job, each importing only those listed above it:
  settings.py   ServeSettings (PluginSpec's plugin fields, the policy, the limits) and what each limit bounds
  protocol.py   the wire format: request bodies (to SampleParams, to Problems), responses, OpenAI's error shape
  metrics.py    counters and the latency histogram, as Prometheus text
  resolve.py    what runs for a request: the body, headers, model name and default as layers, resolved
  state.py      the server's state: the one backend, the policy, strategies and verifiers built once
  serving.py    running problems (a strategy, or the policy under a budget) into the completion object
  streaming.py  the Server-Sent Events answer to `stream: true`, keep-alives included
  router.py     the routes: a body read under the limits, what runs resolved, run, answered as JSON or a stream
  app.py        the FastAPI app (errors, API key, metrics, OpenAPI schema) and the process: bind, run, SIGTERM
"""
