from uait.main import main

main()
