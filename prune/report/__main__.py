from prune.report.cli import main

main()
