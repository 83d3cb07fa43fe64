"""The train step, its state and optimizer, losses (one list of terms), preemption, metric writers
and FLOPs."""
