"""The long-running agent: wiring of threads, signals, HTTP API and the HA loop."""
