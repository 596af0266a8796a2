"""The plumbing every command shares, apart from the speaker-embedding code: atomic output files
(``fileio``), advisory locks (``locking``), the machine (``system``: cores, memory, load; ``runtime``:
threads and devices), choices read without importing torch (``choices``, ``discover``), encoder files
(``encoder_files``) and torchrun process groups (``distributed``)."""
