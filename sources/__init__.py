"""Event sources that become durable events (Kafka, webhooks, files, schedules)."""
