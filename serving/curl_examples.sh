#!/usr/bin/env bash
# curl examples for the tierwise routing service. Start it first:
#   tierwise serve bundles/teacher --host 127.0.0.1 --port 8000
# then run this script (URL overridable: TIERWISE_URL=http://host:port ./serving/curl_examples.sh).
set -euo pipefail
URL="${TIERWISE_URL:-http://127.0.0.1:8000}"

echo "# liveness (process up) and readiness (bundle loaded and verified; 503 otherwise)"
curl -sS "$URL/healthz"; echo
curl -sS "$URL/readyz"; echo

echo "# route one prompt"
curl -sS -X POST "$URL/v1/route" -H 'Content-Type: application/json' \
  -d '{"text": "Write a Python function that merges two sorted lists", "request_id": "example-1"}'; echo

echo "# route a batch (at most the bundle's max_batch prompts)"
curl -sS -X POST "$URL/v1/route" -H 'Content-Type: application/json' \
  -d '{"texts": ["hi there", "Prove that the square root of 2 is irrational", "My SSN is 078-05-1120"]}'; echo

echo "# an empty prompt cannot be classified: 200 with the safe decision, flagged invalid_input"
curl -sS -X POST "$URL/v1/route" -H 'Content-Type: application/json' -d '{"text": ""}'; echo

echo "# a malformed request: 400 with {\"error\": {\"type\", \"message\"}}"
curl -sS -w ' (HTTP %{http_code})' -X POST "$URL/v1/route" -H 'Content-Type: application/json' -d '{"text": 42}'; echo

echo "# Prometheus metrics (request counts, latency histogram, decisions per tier and per class)"
curl -sS "$URL/metrics" | grep -E '^tierwise_(requests_total|decisions_total|head_predictions_total)' || true

echo "# the OpenAPI schema"
curl -sS "$URL/openapi.json" | head -c 300; echo
