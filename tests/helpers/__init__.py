"""What tests share by name: specs (the tiny spec, data files), files (nothing written), judges (fake
endpoints), services (PostgreSQL, `afina server` processes, waiting for a trial)."""
