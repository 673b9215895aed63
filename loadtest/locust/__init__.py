"""The locust harness: scenarios (locustfile), arrival shapes, the traffic mix, and the
runner behind `loadtest/run`."""
