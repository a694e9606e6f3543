"""Pipeline stages: each reads its inputs, calls the library code, writes its outputs atomically, logs."""
