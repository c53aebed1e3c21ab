from prune.sweep.cli import main

main()
