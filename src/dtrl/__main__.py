from dtrl.cli import main

main()
