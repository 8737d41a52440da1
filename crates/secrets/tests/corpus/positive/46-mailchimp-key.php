$mc = new MailchimpMarketing\ApiClient(); $mc->setConfig(['apiKey' => '260c3956b59590786d1e25d5df801988-us14']);
