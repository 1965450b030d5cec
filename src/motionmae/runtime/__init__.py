"""What every command runs on: device, amp, distributed, model wrapping, checkpoint IO, logs, progress. Imports nothing above it."""
