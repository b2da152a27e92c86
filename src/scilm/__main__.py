from scilm.cli import main

main()
