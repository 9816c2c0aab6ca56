"""One module per DVC stage: ``run()`` does the work, ``main()`` reads and writes the files."""
