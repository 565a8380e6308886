"""Push handling (ack or nack, leases, cancels, draining) and the delivery of results
(webhooks, the result topic). It uses the engine and the backends, never the edge."""
