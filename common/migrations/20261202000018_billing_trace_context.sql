-- The W3C trace context of the job whose batch made the version (docs/architecture.md,
-- "Traces"): the send to the billing system joins that job's trace. NULL when untraced.
ALTER TABLE billing_outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text;
