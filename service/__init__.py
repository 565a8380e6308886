"""ML Orchestrator: runs flows of ML function calls, delivered by Pub/Sub push."""
