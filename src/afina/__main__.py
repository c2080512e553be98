from afina.cli import main

main()
