"""Transports that bring HL7v2 into the gateway: MLLP, HTTP, files, Kafka (one interface)."""
