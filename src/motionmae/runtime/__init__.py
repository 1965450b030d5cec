"""What every command runs on: device, amp, distributed, model wrapping, checkpoint IO, run directory (lock, output
checks), logs, progress. Imports nothing above it."""
