from af.cli import main

main()
