from pbx.cli import main

main()
