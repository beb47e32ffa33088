from pgwarden.entry import main

main()
