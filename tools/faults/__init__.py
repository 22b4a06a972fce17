"""Fault-injection harnesses (crash, torn writes) for Kestrel's durable components."""
