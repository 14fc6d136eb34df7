"""Emit one activity log to logbridge from a Python worker with the OpenTelemetry SDK.

    pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc
    export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317
    export OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20<your key>"
    python examples/python_worker.py
"""

import json

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

# The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_HEADERS.
provider = LoggerProvider(resource=Resource.create({"service.name": "voice-worker"}))
provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
logger = provider.get_logger("voice-worker.activity")

logger.emit(
    body="Inbound context lookup completed successfully",
    severity_number=SeverityNumber.INFO,
    event_name="inbound_context_lookup",
    attributes={
        "activity.log_type": "inbound_context_lookup",
        "activity.status": "success",
        "activity.assistant_id": "550e8400-e29b-41d4-a716-446655440000",
        "activity.room_name": "550e8400_abc123",
        "activity.latency_ms": 312,
        # nested data as a JSON string: Python attributes cannot hold dicts
        "activity.request_data": json.dumps({
            "strategy_id": "f0f6d398-f9d9-4a7b-bc8e-4f24f57ec2de",
            "strategy_type": "webhook",
            "url": "https://example.com/caller-context",
            "payload": {"caller_number": "+919876543210", "inbound_number": "918044319240"},
        }),
        "activity.response_data": json.dumps({
            "context_keys": ["customer_name", "ticket_id"],
            "context_size": 2,
        }),
    },
)
provider.shutdown()  # flushes the batch
