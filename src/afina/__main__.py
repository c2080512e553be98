from afina.cli.app import main

main()
