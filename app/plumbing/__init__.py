"""Plumbing under every part: settings, migrations, problem responses, backoff, what a failed
dependency looks like, and the resources every entry point opens."""
