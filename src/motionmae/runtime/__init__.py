"""What every loop needs and nothing above it: device, amp, distributed, checkpoint IO, run directory, logs."""
