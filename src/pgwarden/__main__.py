from pgwarden.cli.main import main

main()
