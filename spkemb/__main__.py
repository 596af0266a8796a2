from spkemb.cli.app import main

main()
