-- Tracing: the W3C `traceparent` of the span that triggered the run (NULL when tracing is off).
-- Every step job of the run carries it, so the run's spans in every process form one trace.
ALTER TABLE chain_runs ADD COLUMN trace_context TEXT;
