echo dckr_pat_Ty5Pa26Ggf6zfcDmWLrlr38OAHb | docker login -u acmebot --password-stdin
